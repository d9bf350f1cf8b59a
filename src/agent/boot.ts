/**
 * What kata-init executes in the guest: starts the agent (main.ts).
 *
 * A file of its own so the guest image can replace it with a one-file
 * bundle of the agent and everything it imports (guest/image/build.sh, with
 * esbuild): under TCG, loading the ~100 separate module files cost 1.8–1.9 s
 * against 1.1–1.5 s for the bundle. It lives in dist/src/agent/ like the
 * files it bundles, so every __dirname-relative path (the native addon,
 * proto/agent.proto) resolves the same either way. Without esbuild the
 * image keeps this file as compiled, which loads the separate files.
 */
import { main } from './main';

main();
