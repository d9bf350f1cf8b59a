/**
 * Worker thread for the converter (chunker.ts): LZ4-compresses chunks with
 * our AssemblyScript encoder off the main thread, so conversion uses every
 * core. Message in: { id, chunk: Uint8Array (transferred) }; out: { id,
 * data: Uint8Array | null } — null when compression would not save space.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Lz4 } from '../hot/lz4';

const lz4 = new Lz4({ maxBlockBytes: (workerData as { chunkSize: number }).chunkSize });
parentPort!.on('message', (m: { id: number; chunk: Uint8Array }) => {
  const c = lz4.compressBlock(m.chunk);
  if (c.length < m.chunk.length) {
    const out = new Uint8Array(c);
    parentPort!.postMessage({ id: m.id, data: out }, [out.buffer]);
  } else parentPort!.postMessage({ id: m.id, data: null });
});
