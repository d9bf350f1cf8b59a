/**
 * chunks.bin (src/image/chunk-table.ts): round trip, and every field that
 * could send a reader out of bounds is refused with a ChunkTableError.
 */
import { expect } from 'chai';
import { CHUNK_FLAG_LZ4, CHUNK_TABLE_HEADER, CHUNK_TABLE_BLOB_RECORD, ChunkTableError, decodeChunkTable, encodeChunkTable, type ChunkTable } from '../../../src/image/chunk-table';

const H = (c: string): string => c.repeat(64);

function table(): ChunkTable {
  return {
    chunkSize: 1 << 20,
    blobs: [{ digest: H('a'), size: 3000 }, { digest: H('b'), size: 1 << 20 }],
    slots: [
      { sha256: H('1'), blob: 0, offset: 0, storedSize: 1000, size: 1 << 20, flags: CHUNK_FLAG_LZ4 },
      { sha256: H('2'), blob: 0, offset: 1000, storedSize: 2000, size: 2000, flags: 0 },
      { sha256: H('3'), blob: 1, offset: 0, storedSize: 1 << 20, size: 1 << 20, flags: 0 },
    ],
  };
}

const SLOT0 = CHUNK_TABLE_HEADER + 2 * CHUNK_TABLE_BLOB_RECORD;

describe('chunk table (chunks.bin)', () => {
  it('round-trips', () => {
    const b = encodeChunkTable(table());
    expect(b.toString('latin1', 0, 8)).to.equal('KTSCHNK1');
    expect(Number(b.readBigUInt64LE(24))).to.equal(3 << 20);
    expect(decodeChunkTable(b)).to.deep.equal(table());
  });

  const cases: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['bad magic', (b) => { b[0] = 0x41; return b; }, /bad magic/],
    ['unknown version', (b) => { b.writeUInt32LE(9, 8); return b; }, /version 9/],
    ['chunk size not a power of two', (b) => { b.writeUInt32LE(3 << 20, 12); return b; }, /power of two/],
    ['truncated', (b) => b.subarray(0, b.length - 1), /header says/],
    ['device size that disagrees', (b) => { b.writeBigUInt64LE(5n, 24); return b; }, /device size 5/],
    ['blob index past the blob list', (b) => { b.writeUInt32LE(2, SLOT0 + 32); return b; }, /blob index 2 outside/],
    ['slot reaching past its blob', (b) => { b.writeBigUInt64LE(2500n, SLOT0 + 56 + 36); return b; }, /outside blob/],
    ['uncompressed size over the chunk size', (b) => { b.writeUInt32LE((1 << 20) + 1, SLOT0 + 48); return b; }, /uncompressed size/],
    ['raw chunk whose stored size differs', (b) => { b.writeUInt32LE(1999, SLOT0 + 56 + 44); return b; }, /stored size 1999 impossible/],
    ['unknown flag', (b) => { b.writeUInt32LE(6, SLOT0 + 52); return b; }, /unknown flags 0x6/],
    ['offset beyond 2^53', (b) => { b.writeBigUInt64LE(1n << 60n, SLOT0 + 36); return b; }, /too large/],
  ];
  for (const [what, corrupt, re] of cases) {
    it(`refuses ${what}`, () => {
      const b = corrupt(encodeChunkTable(table()));
      expect(() => decodeChunkTable(b)).to.throw(ChunkTableError, re);
    });
  }

  it('refuses to encode an inconsistent table', () => {
    const t = table();
    t.slots[0].blob = 7;
    expect(() => encodeChunkTable(t)).to.throw(ChunkTableError, /blob index 7/);
  });
});
