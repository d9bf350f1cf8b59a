/**
 * CRI PortForward through containerd, as `kubectl port-forward` reaches it
 * (README "CRI validation suite", portforward): a pod whose container runs
 * busybox `nc -l` on a port no PortMapping declares; PortForward returns
 * the streaming server's URL and our WebSocket client
 * (test/helpers/cri-port-forward.ts) forwards one connection through it.
 * containerd then enters the pod's netns and dials localhost:PORT; for
 * kata-ts the shim's forwarder carries it into the VM. The bytes cross
 * both ways (the container keeps what it got), a port nobody serves comes
 * back as containerd's error for that port, and after the pod nothing is
 * left. runc runs the same `it`s: the reference, and a check of the client.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BUSYBOX, type CriContainerd, HANDLERS, startCriContainerd, stopCriContainerd } from '../helpers/cri-containerd';
import { printContainerdLogOnFailure } from '../helpers/containerd';
import type { PodSandboxConfig } from '../helpers/cri';
import { portForwardInNetns, type PortForwardResult } from '../helpers/cri-port-forward';

const PORT = 8082;

for (const handler of HANDLERS) {
  describe(`e2e: CRI PortForward through containerd (${handler})`, function () {
    this.timeout(handler === 'kata-ts' ? 400_000 : 200_000);
    let cd: CriContainerd;

    before(async function () {
      cd = await startCriContainerd(this, handler);
    });

    after(() => stopCriContainerd(cd));

    afterEach(function () {
      printContainerdLogOnFailure(this, cd, { only: /level=(error|warning)|ort ?forward/i, lines: 20 });
    });

    it('forwards an undeclared port of a container both ways; a port nobody serves is an error for that port', async () => {
      const tag = `${handler}-${Date.now() % 100000}`;
      const logDir = path.join(cd.dir, 'pods', 'pf');
      fs.mkdirSync(logDir, { recursive: true });
      const config: PodSandboxConfig = {
        metadata: { name: 'pf', uid: 'uid-pf', namespace: 'cri-test', attempt: 0 },
        hostname: 'pf-host', log_directory: logDir,
        linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
      };
      const pod = await cd.cri.runPodSandbox(config, handler);
      try {
        const ctr = await cd.cri.createContainer(pod, {
          metadata: { name: 'server', attempt: 0 }, image: { image: BUSYBOX },
          // stdin held open: busybox nc quits at its stdin's end, maybe before our bytes came.
          command: ['sh', '-c', `(echo "from the pod ${tag}"; sleep 3600) | nc -l -p ${PORT} > /tmp/got; sleep 3600`],
          log_path: 'server/0.log', linux: {},
        }, config);
        await cd.cri.startContainer(ctr);
        // Until nc listens (each try needs a URL of its own: a token serves one request).
        let r: PortForwardResult = { data: '', error: '', frames: [] };
        const errors = new Set<string>();
        const deadline = Date.now() + (handler === 'kata-ts' ? 240_000 : 60_000);
        while (Date.now() < deadline) {
          const url = await cd.cri.portForward(pod, [PORT]);
          r = await portForwardInNetns(cd.netns, url, PORT, `to the pod ${tag}\n`, `from the pod ${tag}\n`);
          if (r.data.includes(tag)) break;
          errors.add(`${r.failure ?? r.error.slice(0, 120)} [${r.frames.join(' ')}]`);
          await new Promise((res) => setTimeout(res, 500));
        }
        expect(r.data, `errors meanwhile: ${[...errors].join(' | ')}`).to.equal(`from the pod ${tag}\n`);
        // What the container received.
        let got = '';
        for (let i = 0; i < 40 && !got.includes(tag); i++) {
          got = (await cd.cri.execSync(ctr, ['cat', '/tmp/got'], 30)).stdout.toString();
          if (!got.includes(tag)) await new Promise((res) => setTimeout(res, 250));
        }
        expect(got).to.equal(`to the pod ${tag}\n`);
        // Nobody serves 8099 in the pod: containerd reports an error for that port (no hang).
        const t0 = Date.now();
        const url = await cd.cri.portForward(pod, [8099]);
        const bad = await portForwardInNetns(cd.netns, url, 8099, 'x', 'never');
        expect(bad.error, JSON.stringify(bad)).to.match(/error forwarding port 8099/);
        expect(bad.data).to.equal('');
        expect(Date.now() - t0).to.be.below(20_000);
      } finally {
        await cd.cri.stopPodSandbox(pod);
        await cd.cri.removePodSandbox(pod);
      }
    });
  });
}
