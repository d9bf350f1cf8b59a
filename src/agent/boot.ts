/**
 * What kata-init executes in the guest: starts the agent (main.ts).
 *
 * A file of its own so the guest image can replace it with a one-file
 * bundle of the agent and everything it imports (guest/image/build.sh, with
 * esbuild): under TCG, loading the ~100 separate module files cost 1.8–1.9 s
 * against 1.1–1.5 s for the bundle. It lives in dist/src/agent/ like the
 * files it bundles, so every __dirname-relative path (the native addon,
 * proto/agent.proto) resolves the same either way.
 *
 * The bundle is also the entry of a V8 startup snapshot (Node's
 * --build-snapshot): guest/image/agent-snapshot.sh builds it inside a guest
 * booted from the image itself at image build time, because V8 refuses a
 * blob made under other CPU features and the emulated `-cpu max` is not the
 * host's CPU. kata-init starts Node with --snapshot-blob when the image has
 * one: the agent's modules are then evaluated and proto/agent.proto parsed
 * at image build time, and the guest only deserializes the heap. Within a
 * snapshot require() loads built-in modules only, so the native addon is
 * loaded here through module.createRequire after deserialization (a
 * snapshot cannot contain an addon).
 *
 * main is required here, not imported, so that the time Node took to reach
 * this line and the time the agent's modules take to load are two phases
 * the ready line reports (esbuild keeps a require's evaluation lazy too).
 * require(), not import, for everything: an import makes this file a module
 * whose compiled form writes to `exports`, which a snapshot's entry lacks.
 */
const v8: typeof import('node:v8') = require('node:v8');

if (v8.startupSnapshot?.isBuildingSnapshot()) {
  const agent = require('./main') as typeof import('./main');
  // Node serializes the heap once the event loop has drained: after the warm-up (main.ts prepare).
  void agent.prepare().then((line) => process.stderr.write(`${line}\n`));
  v8.startupSnapshot.setDeserializeMainFunction(() => {
    const nodeStartMs = Math.round(process.uptime() * 1000);
    const path: typeof import('node:path') = require('node:path');
    const { createRequire }: typeof import('node:module') = require('node:module');
    const { setNativeForTests: setNative }: typeof import('../common/native') = require('../common/native');
    // The same path native() computes (this file sits next to native.ts's compiled siblings).
    const addonFile = path.resolve(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'kata_native.node');
    try { setNative(createRequire(addonFile)(addonFile)); } catch { /* native() reports it when first used */ }
    agent.main({ nodeStartMs, modulesMs: 0, snapshot: true });
  });
} else {
  const nodeStartMs = Math.round(process.uptime() * 1000);
  const t0 = process.hrtime.bigint();
  const agent = require('./main') as typeof import('./main');
  agent.main({ nodeStartMs, modulesMs: Math.round(Number(process.hrtime.bigint() - t0) / 1e6), snapshot: false });
}
