/**
 * containerd's runtime options for the shim (Kata's `ConfigPath`).
 *
 * A handler configured with
 *   [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-ts.options]
 *     ConfigPath = "/etc/kata-ts/fast.toml"
 * (or `ctr run --runtime-config-path FILE`) reaches the shim as a
 * google.protobuf.Any of type "runtimeoptions.v1.Options"
 * (proto/containerd/runtimeoptions/v1/api.proto): containerd 1.6 writes it to
 * `start`'s stdin (seen on this host: 0a19 "runtimeoptions.v1.Options" 12 ..),
 * and again in CreateTaskRequest.options. `start` reads it before anything
 * loads the configuration and puts the path in KATA_TS_CONFIG, so the VM
 * cache claim and the shim it spawns (which inherits the environment) use
 * that file: one handler per configuration, as Kata's users do it.
 *
 * Parsed with our own schema-driven codec (no protobufjs on `start`'s path:
 * it runs once per pod and must stay cheap), and as hostile input: malformed
 * bytes, a relative or missing path are errors that name the option.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { decodeMessage, ProtoDecodeError } from '../protocols/protobuf/codec';
import { parseProto } from '../protocols/protobuf/schema';
import type { MessageSchema } from '../protocols/protobuf/schema';

export class RuntimeOptionsError extends KataError<'malformed' | 'config-path'> {}

/** The Any type URL containerd gives runtimeoptions.v1.Options (its proto message name). */
export const RUNTIME_OPTIONS_TYPE = 'runtimeoptions.v1.Options';

const OPTIONS_PROTO = path.resolve(__dirname, '..', '..', '..', 'proto', 'containerd', 'runtimeoptions', 'v1', 'api.proto');
const ANY_PROTO = 'syntax = "proto3"; package google.protobuf; message Any { string type_url = 1; bytes value = 2; }';

let schemas: { any: MessageSchema; options: MessageSchema } | undefined;

function load(): { any: MessageSchema; options: MessageSchema } {
  if (schemas) return schemas;
  const options = parseProto(fs.readFileSync(OPTIONS_PROTO, 'utf8'), OPTIONS_PROTO).messages.get(RUNTIME_OPTIONS_TYPE)!;
  const any = parseProto(ANY_PROTO, 'google/protobuf/any.proto').messages.get('google.protobuf.Any')!;
  schemas = { any, options };
  return schemas;
}

/** Whether an Any's type URL names runtimeoptions.v1.Options (bare, or with a type.googleapis.com/-style prefix). */
function isRuntimeOptions(typeUrl: string): boolean {
  return typeUrl === RUNTIME_OPTIONS_TYPE || typeUrl.endsWith(`/${RUNTIME_OPTIONS_TYPE}`);
}

/**
 * The configuration file an options Any names, or undefined when it names
 * none (empty ConfigPath, or another runtime's options type: containerd's
 * runc options reach us only through a misconfigured handler, and say
 * nothing we use). The path must be absolute and an existing file.
 */
export function configPathFromAny(any: { type_url: string; value: Buffer | Uint8Array }): string | undefined {
  if (!isRuntimeOptions(any.type_url)) return undefined;
  let opts: Record<string, unknown>;
  try {
    opts = decodeMessage(load().options, Buffer.from(any.value));
  } catch (err) {
    if (err instanceof ProtoDecodeError) throw new RuntimeOptionsError('malformed', `containerd runtime options (${RUNTIME_OPTIONS_TYPE}) are malformed: ${err.message}`, { cause: err });
    throw err;
  }
  const p = opts.config_path as string;
  if (!p) return undefined;
  if (!path.isAbsolute(p)) throw new RuntimeOptionsError('config-path', `containerd runtime option ConfigPath "${p}" must be an absolute path`);
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    throw new RuntimeOptionsError('config-path', `containerd runtime option ConfigPath "${p}": no such file`);
  }
  if (!st.isFile()) throw new RuntimeOptionsError('config-path', `containerd runtime option ConfigPath "${p}" is not a regular file`);
  return p;
}

/** The same, from the serialized Any containerd writes to `start`'s stdin; empty input: none. */
export function configPathFromStartInput(bytes: Buffer): string | undefined {
  if (bytes.length === 0) return undefined;
  let any: Record<string, unknown>;
  try {
    any = decodeMessage(load().any, bytes);
  } catch (err) {
    if (err instanceof ProtoDecodeError) throw new RuntimeOptionsError('malformed', `containerd runtime options on stdin are not a protobuf Any: ${err.message}`, { cause: err });
    throw err;
  }
  return configPathFromAny({ type_url: any.type_url as string, value: any.value as Buffer });
}

/**
 * What containerd wrote to `start`'s stdin: nothing when stdin is a
 * terminal (a person running `start` by hand) or /dev/null (containerd
 * without options); a pipe or file is read to its end.
 */
export function readStartInput(fd = 0): Buffer {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch {
    return Buffer.alloc(0);
  }
  if (!st.isFIFO() && !st.isFile() && !st.isSocket()) return Buffer.alloc(0);
  try {
    return fs.readFileSync(fd);
  } catch {
    return Buffer.alloc(0);
  }
}
