import * as fs from 'node:fs';
import * as path from 'node:path';
import { skipOrFail } from '../../helpers/skip';

/** The factory's memory copy needs the addon (lseek SEEK_DATA, memfd). */
export function requireNative(ctx: Mocha.Context): void {
  const addon = path.resolve(__dirname, '..', '..', '..', '..', 'native', 'build', 'Release', 'kata_native.node');
  if (!fs.existsSync(addon)) skipOrFail(ctx, `native addon not built (${addon}; cd native && npx node-gyp rebuild)`);
}
