/**
 * Builds a multi-layer OCI image layout (image-spec v1.1: oci-layout,
 * index.json, blobs/sha256) from host directories, one gzip layer per
 * directory (GNU tar, numeric owners), for the image integration test and
 * bench/image-lazy.ts — no registry or image tool needed.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { execFileSync } from 'node:child_process';

/** A layer: a whole directory, or some paths (relative) under a root, e.g. parts of the host's / */
export type LayerSource = string | { root: string; paths: string[] };

export interface OciImageSpec {
  /** One layer each, lowest first. */
  layers: LayerSource[];
  tag: string;
  entrypoint?: string[];
  cmd?: string[];
  env?: string[];
  workdir?: string;
}

function putBlob(layout: string, data: Buffer): { digest: string; size: number } {
  const hex = crypto.createHash('sha256').update(data).digest('hex');
  fs.writeFileSync(path.join(layout, 'blobs', 'sha256', hex), data);
  return { digest: `sha256:${hex}`, size: data.length };
}

/** Writes the layout at `layout`; returns the manifest digest (the converted image's id). */
export function buildOciLayout(layout: string, spec: OciImageSpec): string {
  fs.mkdirSync(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const layers: { digest: string; size: number }[] = [];
  const diffIds: string[] = [];
  for (const l of spec.layers) {
    const [dir, paths] = typeof l === 'string' ? [l, ['.']] : [l.root, l.paths];
    // Parent directories as entries of their own (owners, modes), not implied.
    const parents = [...new Set(paths.flatMap((p) => p.split('/').slice(0, -1).map((_, i, a) => a.slice(0, i + 1).join('/'))))].filter(Boolean).sort();
    const tar = execFileSync('tar', ['-C', dir, '--numeric-owner', '--xattrs', '-cf', '-', '--no-recursion', ...parents, '--recursion', ...paths], { maxBuffer: 4 << 30 });
    diffIds.push(`sha256:${crypto.createHash('sha256').update(tar).digest('hex')}`);
    layers.push(putBlob(layout, zlib.gzipSync(tar, { level: 1 })));
  }
  const config = putBlob(layout, Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux',
    config: { Entrypoint: spec.entrypoint, Cmd: spec.cmd, Env: spec.env, WorkingDir: spec.workdir },
    rootfs: { type: 'layers', diff_ids: diffIds },
  })));
  const manifest = putBlob(layout, Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...l })),
  })));
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': spec.tag } }],
  }));
  return manifest.digest;
}
