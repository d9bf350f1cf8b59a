/**
 * The agent policy format: a declarative JSON document the host hands the
 * guest agent once, in CreateSandbox (proto/agent.proto `policy_json`), and
 * the agent enforces on every later request (src/agent/policy.ts). This
 * module owns the format only: parsing, validation (every unknown key, bad
 * type or bad regular expression is an error naming its path) and the
 * sha256 the host pins on the guest kernel command line. Shared by host
 * (validates before a VM boots, so a malformed policy fails early) and
 * agent (parses again: it is the authority). Kata 3.3's equivalent is a Rego
 * policy set through SetPolicy / the `io.katacontainers.config.agent.policy`
 * annotation; ours is JSON and much smaller. README "Agent policy" shows it.
 *
 * Patterns are JavaScript regular expressions matched against the whole
 * string (anchored as ^(?:pattern)$). Lists of patterns mean "any of these".
 */
import * as crypto from 'node:crypto';
import { KataError } from '../common/errors';
import { agentServiceDefinition } from './agent-api';

export class PolicyError extends KataError<'malformed'> {}

/** Pod annotation carrying a policy as base64 JSON (Kata's name). */
export const POLICY_ANNOTATION = 'io.katacontainers.config.agent.policy';
/** Guest kernel parameter pinning the policy's sha256 (hex) for the whole life of the VM. */
export const POLICY_KERNEL_PARAM = 'agent.policy_sha256';

/**
 * RPCs a policy may not name in `requests`: Check is the health probe the
 * host dials with, and CreateSandbox is accepted exactly once — it is the
 * request that carries the policy.
 */
export const UNGOVERNED_RPCS: readonly string[] = ['Check', 'CreateSandbox'];

export interface Pattern {
  /** The pattern as written, for messages. */
  source: string;
  re: RegExp;
}

/** An allowed command line: one pattern per argument, or a fixed prefix then any number of args matching `rest`. */
export type ArgsRule = { exact: Pattern[] } | { prefix: Pattern[]; rest: Pattern };

export interface ProcessRules {
  args?: ArgsRule[];
  env?: { allow?: Pattern[]; deny?: Pattern[] };
  cwd?: Pattern[];
  /** false: uid 0 is refused. */
  allow_root?: boolean;
  /** true: process.noNewPrivileges must be true. */
  no_new_privileges?: boolean;
  /** Every capability in any of the process's sets must be one of these. */
  capabilities?: string[];
}

export interface MountRule {
  type?: Pattern;
  source?: Pattern;
  destination?: Pattern;
  /** Options the mount must carry (e.g. "ro"). */
  require_options?: string[];
}

export interface StorageRule {
  driver?: Pattern;
  source?: Pattern;
  fstype?: Pattern;
  mount_point?: Pattern;
}

export interface AgentPolicy {
  version: 1;
  requests: { default: 'allow' | 'deny'; allow: string[]; deny: string[] };
  sandbox?: { sysctls?: Pattern[]; hostname?: Pattern[] };
  create_container?: { readonly_rootfs?: boolean; process?: ProcessRules; mounts?: MountRule[]; storages?: StorageRule[] };
  exec_process?: { process?: ProcessRules };
  /** The text it was parsed from and its sha256 (hex). */
  text: string;
  sha256: string;
}

export function policySha256(text: string): string {
  return crypto.createHash('sha256').update(text, 'utf8').digest('hex');
}

/** Every RPC of the agent's service (proto/agent.proto). */
export function agentRpcNames(): string[] {
  return Object.keys(agentServiceDefinition());
}

type Json = unknown;

class Reader {
  constructor(private readonly known: ReadonlySet<string>) {}

  fail(at: string, msg: string): never {
    throw new PolicyError('malformed', `${at}: ${msg}`);
  }

  object(v: Json, at: string, keys: string[]): Record<string, Json> {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(at, 'must be a JSON object');
    const o = v as Record<string, Json>;
    for (const k of Object.keys(o)) if (!keys.includes(k)) this.fail(at, `unknown key "${k}" (known: ${keys.join(', ')})`);
    return o;
  }

  bool(v: Json, at: string): boolean {
    if (typeof v !== 'boolean') this.fail(at, 'must be true or false');
    return v;
  }

  string(v: Json, at: string): string {
    if (typeof v !== 'string') this.fail(at, 'must be a string');
    return v;
  }

  array(v: Json, at: string): Json[] {
    if (!Array.isArray(v)) this.fail(at, 'must be an array');
    return v;
  }

  strings(v: Json, at: string): string[] {
    return this.array(v, at).map((x, i) => this.string(x, `${at}[${i}]`));
  }

  pattern(v: Json, at: string): Pattern {
    const source = this.string(v, at);
    try {
      return { source, re: new RegExp(`^(?:${source})$`, 'u') };
    } catch (err) {
      return this.fail(at, `invalid regular expression: ${(err as Error).message}`);
    }
  }

  patterns(v: Json, at: string): Pattern[] {
    return this.array(v, at).map((x, i) => this.pattern(x, `${at}[${i}]`));
  }

  rpcs(v: Json, at: string): string[] {
    const names = this.strings(v, at);
    names.forEach((n, i) => {
      if (UNGOVERNED_RPCS.includes(n)) this.fail(`${at}[${i}]`, `${n} cannot be allowed or denied (Check is always served; CreateSandbox is accepted once, carrying the policy)`);
      if (!this.known.has(n)) this.fail(`${at}[${i}]`, `unknown RPC "${n}" (known: ${[...this.known].filter((k) => !UNGOVERNED_RPCS.includes(k)).join(', ')})`);
    });
    return names;
  }

  argsRule(v: Json, at: string): ArgsRule {
    if (Array.isArray(v)) {
      if (v.length === 0) this.fail(at, 'a command line needs at least one pattern');
      return { exact: this.patterns(v, at) };
    }
    const o = this.object(v, at, ['prefix', 'rest']);
    if (o.prefix === undefined || o.rest === undefined) this.fail(at, 'needs both "prefix" (array of patterns) and "rest" (pattern)');
    const prefix = this.patterns(o.prefix, `${at}.prefix`);
    if (prefix.length === 0) this.fail(`${at}.prefix`, 'needs at least one pattern (the command)');
    return { prefix, rest: this.pattern(o.rest, `${at}.rest`) };
  }

  process(v: Json, at: string): ProcessRules {
    const o = this.object(v, at, ['args', 'env', 'cwd', 'allow_root', 'no_new_privileges', 'capabilities']);
    const r: ProcessRules = {};
    if (o.args !== undefined) r.args = this.array(o.args, `${at}.args`).map((x, i) => this.argsRule(x, `${at}.args[${i}]`));
    if (o.env !== undefined) {
      const e = this.object(o.env, `${at}.env`, ['allow', 'deny']);
      r.env = {};
      if (e.allow !== undefined) r.env.allow = this.patterns(e.allow, `${at}.env.allow`);
      if (e.deny !== undefined) r.env.deny = this.patterns(e.deny, `${at}.env.deny`);
    }
    if (o.cwd !== undefined) r.cwd = this.patterns(o.cwd, `${at}.cwd`);
    if (o.allow_root !== undefined) r.allow_root = this.bool(o.allow_root, `${at}.allow_root`);
    if (o.no_new_privileges !== undefined) r.no_new_privileges = this.bool(o.no_new_privileges, `${at}.no_new_privileges`);
    if (o.capabilities !== undefined) {
      r.capabilities = this.strings(o.capabilities, `${at}.capabilities`);
      r.capabilities.forEach((c, i) => {
        if (!/^CAP_[A-Z_]+$/.test(c)) this.fail(`${at}.capabilities[${i}]`, `"${c}" is not a capability name (CAP_...)`);
      });
    }
    return r;
  }

  mount(v: Json, at: string): MountRule {
    const o = this.object(v, at, ['type', 'source', 'destination', 'require_options']);
    const r: MountRule = {};
    if (o.type !== undefined) r.type = this.pattern(o.type, `${at}.type`);
    if (o.source !== undefined) r.source = this.pattern(o.source, `${at}.source`);
    if (o.destination !== undefined) r.destination = this.pattern(o.destination, `${at}.destination`);
    if (o.require_options !== undefined) r.require_options = this.strings(o.require_options, `${at}.require_options`);
    return r;
  }

  storage(v: Json, at: string): StorageRule {
    const o = this.object(v, at, ['driver', 'source', 'fstype', 'mount_point']);
    const r: StorageRule = {};
    for (const k of ['driver', 'source', 'fstype', 'mount_point'] as const) if (o[k] !== undefined) r[k] = this.pattern(o[k], `${at}.${k}`);
    return r;
  }
}

/**
 * Parse and validate a policy. `rpcs`: the RPC names it may mention (default:
 * the agent service's, read from proto/agent.proto). Throws PolicyError
 * naming the offending path, e.g. `policy.requests.deny[0]: unknown RPC "Exec"`.
 */
export function parsePolicy(text: string, rpcs: readonly string[] = agentRpcNames()): AgentPolicy {
  const rd = new Reader(new Set(rpcs));
  let json: Json;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PolicyError('malformed', `policy is not valid JSON: ${(err as Error).message}`);
  }
  const o = rd.object(json, 'policy', ['version', 'requests', 'sandbox', 'create_container', 'exec_process']);
  if (o.version !== 1) rd.fail('policy.version', `must be 1 (got ${JSON.stringify(o.version)})`);
  const p: AgentPolicy = { version: 1, requests: { default: 'allow', allow: [], deny: [] }, text, sha256: policySha256(text) };
  if (o.requests !== undefined) {
    const r = rd.object(o.requests, 'policy.requests', ['default', 'allow', 'deny']);
    if (r.default !== undefined) {
      if (r.default !== 'allow' && r.default !== 'deny') rd.fail('policy.requests.default', 'must be "allow" or "deny"');
      p.requests.default = r.default as 'allow' | 'deny';
    }
    if (r.allow !== undefined) p.requests.allow = rd.rpcs(r.allow, 'policy.requests.allow');
    if (r.deny !== undefined) p.requests.deny = rd.rpcs(r.deny, 'policy.requests.deny');
    const both = p.requests.allow.find((n) => p.requests.deny.includes(n));
    if (both) rd.fail('policy.requests', `${both} is both allowed and denied`);
  }
  if (o.sandbox !== undefined) {
    const s = rd.object(o.sandbox, 'policy.sandbox', ['sysctls', 'hostname']);
    p.sandbox = {};
    if (s.sysctls !== undefined) p.sandbox.sysctls = rd.patterns(s.sysctls, 'policy.sandbox.sysctls');
    if (s.hostname !== undefined) p.sandbox.hostname = rd.patterns(s.hostname, 'policy.sandbox.hostname');
  }
  if (o.create_container !== undefined) {
    const at = 'policy.create_container';
    const c = rd.object(o.create_container, at, ['readonly_rootfs', 'process', 'mounts', 'storages']);
    p.create_container = {};
    if (c.readonly_rootfs !== undefined) p.create_container.readonly_rootfs = rd.bool(c.readonly_rootfs, `${at}.readonly_rootfs`);
    if (c.process !== undefined) p.create_container.process = rd.process(c.process, `${at}.process`);
    if (c.mounts !== undefined) p.create_container.mounts = rd.array(c.mounts, `${at}.mounts`).map((m, i) => rd.mount(m, `${at}.mounts[${i}]`));
    if (c.storages !== undefined) p.create_container.storages = rd.array(c.storages, `${at}.storages`).map((s, i) => rd.storage(s, `${at}.storages[${i}]`));
  }
  if (o.exec_process !== undefined) {
    const e = rd.object(o.exec_process, 'policy.exec_process', ['process']);
    p.exec_process = {};
    if (e.process !== undefined) p.exec_process.process = rd.process(e.process, 'policy.exec_process.process');
  }
  return p;
}
