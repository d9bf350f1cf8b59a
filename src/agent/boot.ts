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
 * main is required here, not imported, so that the time Node took to reach
 * this line and the time the agent's modules take to load are two phases
 * the ready line reports (esbuild keeps a require's evaluation lazy too).
 */
const nodeStartMs = Math.round(process.uptime() * 1000);
const t0 = process.hrtime.bigint();
const agent = require('./main') as typeof import('./main');
agent.main({ nodeStartMs, modulesMs: Math.round(Number(process.hrtime.bigint() - t0) / 1e6) });
