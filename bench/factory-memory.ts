/**
 * VM templates with the memory density features (issues 13 and 16), side by
 * side in one run, interleaved so the host's load falls on every
 * configuration alike: `kata-ts run -- echo MARK`, start of the CLI to MARK
 * on stdout, for
 *
 *   plain-tpl   the defaults, from their template (today's templated start)
 *   dense-tpl   DAX + balloon + virtio-mem + default_memory 256, from its template
 *   lean-tpl    dense with a 16 MiB TCG cache, from the same template (the
 *               cache size is not in the template key)
 *   dense-cold  dense, cold boot
 *   floor       bench/boot.ts's kernel floor (bare QEMU, same kernel and image, init=/bin/echo)
 *
 *   node dist/bench/factory-memory.js [runs=5]
 *
 * Every templated run is checked to have cloned ("template":true in its
 * 'sandbox ready' line). Kernel, image and DAX image are pinned as copies.
 * Writes build/bench/factory-memory.json. Needs root (the templates' tmpfs).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, writeResult } from './native';
import { MARK, kernelFloorArgs, timeToMarker } from './boot';
import { median } from './stats';
import { defaultConfig, guestAssets } from '../src/runtime/config';
import { DAX_IMAGE_NAME } from '../src/hypervisor/memory-plan';

const DENSE = 'disable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ndefault_memory = 256\ndefault_maxmemory = 2048\n';

async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? 5);
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-fmbench-'));
  const assets = guestAssets(defaultConfig(), 'qemu');
  const pinned = { kernel: path.join(runDir, 'vmlinux'), image: path.join(runDir, 'rootfs.erofs') };
  fs.copyFileSync(assets.kernel, pinned.kernel);
  fs.copyFileSync(assets.image, pinned.image);
  fs.copyFileSync(path.join(path.dirname(assets.image), DAX_IMAGE_NAME), path.join(runDir, DAX_IMAGE_NAME));
  const cfgFile = (name: string, qemu: string, tpl?: string) => {
    const f = path.join(runDir, `${name}.toml`);
    fs.writeFileSync(f, `[runtime]\nrun_dir = "${runDir}"\n[hypervisor.qemu]\nkernel = "${pinned.kernel}"\nimage = "${pinned.image}"\n${qemu}` +
      `[factory]\nenable_template = ${tpl ? 'true' : 'false'}\ntemplate_path = "${tpl ?? path.join(runDir, 'none')}"\n`);
    return f;
  };
  const configs: Record<string, string> = {
    // plain: DAX, balloon and hotplug room off, set explicitly (they are the defaults since issue 13's change).
    'plain-tpl': cfgFile('plain-tpl', 'disable_image_nvdimm = true\nreclaim_guest_freed_memory = false\ndefault_maxmemory = 0\n', path.join(runDir, 'tpl-plain')),
    'dense-tpl': cfgFile('dense-tpl', DENSE, path.join(runDir, 'tpl-dense')),
    'lean-tpl': cfgFile('lean-tpl', `${DENSE}tcg_translation_cache = 16\n`, path.join(runDir, 'tpl-dense')),
    'dense-cold': cfgFile('dense-cold', DENSE),
  };
  const ctl = (cfg: string, ...a: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'bin', 'kata-ctl'), '--config', cfg, ...a], { encoding: 'utf8' });
  const load: number[] = [os.loadavg()[0]!];
  try {
    for (const k of ['plain-tpl', 'dense-tpl']) {
      const r = ctl(configs[k]!, 'factory', 'init');
      if (r.status !== 0) throw new Error(`factory init (${k}): ${r.stderr.trim()}`);
    }
    const samples: Record<string, number[]> = { 'plain-tpl': [], 'dense-tpl': [], 'lean-tpl': [], 'dense-cold': [], floor: [] };
    for (let i = 0; i < runs; i++) {
      process.stderr.write(`run ${i + 1}/${runs} (load ${os.loadavg()[0]!.toFixed(1)})\n`);
      for (const [k, cfg] of Object.entries(configs)) {
        const t = await timeToMarker(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--log-level', 'info', '--config', cfg, '--', 'echo', MARK], 'stdout');
        if (k.endsWith('-tpl') && !/"template":true/.test(t.other)) throw new Error(`${k} did not start from its template: ${t.other.slice(-600)}`);
        samples[k]!.push(t.ms);
      }
      samples.floor!.push((await timeToMarker(defaultConfig()['hypervisor.qemu'].path, kernelFloorArgs('tcg', pinned), 'stdout')).ms);
      load.push(os.loadavg()[0]!);
    }
    const med = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, Math.round(median(v))]));
    const out = { runs, medianMs: med, ratioToPlainTemplate: Object.fromEntries(Object.keys(configs).map((k) => [k, +(med[k]! / med['plain-tpl']!).toFixed(2)])),
      ratioToFloor: Object.fromEntries(Object.keys(configs).map((k) => [k, +(med[k]! / med.floor!).toFixed(2)])), load, samplesMs: samples };
    console.log(`kata-ts run -- echo MARK, start to MARK, median of ${runs} interleaved (load ${load.map((l) => l.toFixed(1)).join(' → ')}):`);
    for (const k of Object.keys(samples)) {
      console.log(`  ${k.padEnd(11)} ${String(med[k]).padStart(6)} ms${k in configs ? `  ${out.ratioToPlainTemplate[k]}x plain-tpl, ${out.ratioToFloor[k]}x floor` : ''}   [${samples[k]!.map((v) => Math.round(v)).join(', ')}]`);
    }
    writeResult('factory-memory', out);
  } finally {
    for (const k of ['plain-tpl', 'dense-tpl']) ctl(configs[k]!, 'factory', 'destroy');
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
