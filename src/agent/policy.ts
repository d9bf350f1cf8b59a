/**
 * The agent's policy engine: decides, for every request, whether the policy
 * the host set at CreateSandbox lets it through (format and parsing:
 * src/protocols/agent-policy.ts). Pure: `evaluate()` maps (policy, RPC,
 * request) to a decision naming the rule; `PolicyGate` holds the one policy
 * of this VM and the rules about when it may be set. service.ts asks the
 * gate once per RPC, before any handler runs.
 *
 * When the policy is set, and why the host cannot change it later:
 * - it travels in the first CreateSandbox (`policy_json`); that request seals
 *   the gate whatever its outcome. A second CreateSandbox is refused, and
 *   there is no other way in (no SetPolicy RPC). A malformed or refused
 *   policy leaves the agent refusing everything but Check (fail closed).
 * - when the host also pins the policy's sha256 on the guest kernel command
 *   line (`agent.policy_sha256=`, fixed for the VM's life), the agent serves
 *   nothing but Check until a CreateSandbox brings exactly that text, so no
 *   request slips in before the policy and no other policy is accepted.
 * What it does not protect against: the host that boots the VM chooses the
 * policy (and the kernel, image and command line) — there is no attestation
 * here, unlike Kata's confidential guests; and a host with root can read and
 * write guest memory. It binds host components that act later (a shim,
 * kata-ctl, a compromised containerd or kubelet asking for an exec).
 */
import type * as api from '../protocols/agent-api';
import { type AgentPolicy, type ArgsRule, type Pattern, type ProcessRules, POLICY_KERNEL_PARAM, PolicyError, parsePolicy, policySha256 } from '../protocols/agent-policy';
import type { OciMount, OciProcess, OciSpec } from '../protocols/oci';
import { AgentError } from './container';

export type Decision = { allowed: true } | { allowed: false; rule: string; reason: string };

const ALLOW: Decision = { allowed: true };
const deny = (rule: string, reason: string): Decision => ({ allowed: false, rule, reason });

const firstMatch = (ps: Pattern[], s: string): Pattern | undefined => ps.find((p) => p.re.test(s));
const q = (s: string): string => JSON.stringify(s);

function argsMatch(rule: ArgsRule, args: string[]): boolean {
  if ('exact' in rule) return rule.exact.length === args.length && rule.exact.every((p, i) => p.re.test(args[i]!));
  return args.length >= rule.prefix.length && rule.prefix.every((p, i) => p.re.test(args[i]!)) && args.slice(rule.prefix.length).every((a) => rule.rest.re.test(a));
}

/** An OCI Process (or its parts the request gave) against ProcessRules; `at` prefixes rule names. */
export function checkProcess(r: ProcessRules, p: Partial<OciProcess>, at: string): Decision {
  if (r.args) {
    const args = Array.isArray(p.args) ? p.args.map(String) : [];
    if (!r.args.some((rule) => argsMatch(rule, args))) return deny(`${at}.args`, `command line ${JSON.stringify(args)} matches none of the ${r.args.length} allowed`);
  }
  if (r.env && Array.isArray(p.env)) {
    for (const e of p.env.map(String)) {
      const bad = r.env.deny && firstMatch(r.env.deny, e);
      if (bad) return deny(`${at}.env.deny[${r.env.deny!.indexOf(bad)}]`, `${q(bad.source)} matches ${q(e)}`);
      if (r.env.allow && !firstMatch(r.env.allow, e)) return deny(`${at}.env.allow`, `${q(e)} matches no allowed pattern`);
    }
  }
  if (r.cwd && p.cwd !== undefined && !firstMatch(r.cwd, String(p.cwd))) return deny(`${at}.cwd`, `${q(String(p.cwd))} matches no allowed pattern`);
  if (r.allow_root === false) {
    // An exec without a user inherits the container's, which the policy cannot see here: refuse rather than guess.
    if (!p.user || typeof p.user.uid !== 'number') return deny(`${at}.allow_root`, 'process.user.uid is not given (it could be root)');
    if (p.user.uid === 0) return deny(`${at}.allow_root`, 'the process would run as uid 0');
  }
  if (r.no_new_privileges && p.noNewPrivileges !== true) return deny(`${at}.no_new_privileges`, 'process.noNewPrivileges must be true');
  if (r.capabilities) {
    const sets = p.capabilities ?? {};
    for (const [set, caps] of Object.entries(sets)) {
      for (const c of Array.isArray(caps) ? caps.map(String) : []) {
        if (!r.capabilities.includes(c)) return deny(`${at}.capabilities`, `${c} (in capabilities.${set}) is not allowed`);
      }
    }
  }
  return ALLOW;
}

function mountMatches(rule: NonNullable<NonNullable<AgentPolicy['create_container']>['mounts']>[number], m: OciMount): boolean {
  const opts = Array.isArray(m.options) ? m.options : [];
  return (!rule.type || rule.type.re.test(m.type ?? '')) && (!rule.source || rule.source.re.test(m.source ?? '')) &&
    (!rule.destination || rule.destination.re.test(m.destination ?? '')) && (rule.require_options ?? []).every((o) => opts.includes(o));
}

function parseJson(text: string | undefined): unknown {
  try {
    return JSON.parse(text ?? '');
  } catch {
    return undefined;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function checkCreateContainer(policy: AgentPolicy, req: api.CreateContainerRequest): Decision {
  const c = policy.create_container;
  if (!c) return ALLOW;
  const spec = parseJson(req.oci_spec_json);
  if (!isObject(spec)) return deny('create_container', 'the OCI spec is not a JSON object, so it cannot be checked');
  const s = spec as Partial<OciSpec>;
  if (c.readonly_rootfs && s.root?.readonly !== true) return deny('create_container.readonly_rootfs', 'root.readonly must be true');
  if (c.process) {
    if (!isObject(s.process)) return deny('create_container.process', 'the spec has no process to check');
    const d = checkProcess(c.process, s.process, 'create_container.process');
    if (!d.allowed) return d;
  }
  if (c.mounts) {
    for (const m of Array.isArray(s.mounts) ? s.mounts : []) {
      if (!isObject(m) || !c.mounts.some((rule) => mountMatches(rule, m))) {
        const mm = m as Partial<OciMount>;
        return deny('create_container.mounts', `mount of ${q(String(mm?.source ?? ''))} (type ${q(String(mm?.type ?? ''))}, options ${JSON.stringify(mm?.options ?? [])}) on ${q(String(mm?.destination ?? ''))} matches no rule`);
      }
    }
  }
  if (c.storages) {
    for (const st of req.storages ?? []) {
      const ok = c.storages.some((r) => (['driver', 'source', 'fstype', 'mount_point'] as const).every((k) => !r[k] || r[k]!.re.test(st[k] ?? '')));
      if (!ok) return deny('create_container.storages', `storage ${st.driver} ${q(st.source)} (${st.fstype}) on ${q(st.mount_point)} matches no rule`);
    }
  }
  return ALLOW;
}

function checkExecProcess(policy: AgentPolicy, req: api.ExecProcessRequest): Decision {
  const r = policy.exec_process?.process;
  if (!r) return ALLOW;
  const p = parseJson(req.process_json);
  if (!isObject(p)) return deny('exec_process', 'the process is not a JSON object, so it cannot be checked');
  return checkProcess(r, p as Partial<OciProcess>, 'exec_process.process');
}

function checkCreateSandbox(policy: AgentPolicy, req: api.CreateSandboxRequest): Decision {
  const s = policy.sandbox;
  if (!s) return ALLOW;
  if (s.sysctls) {
    for (const k of Object.keys(req.sysctls ?? {})) {
      if (!firstMatch(s.sysctls, k)) return deny('sandbox.sysctls', `sysctl ${k} matches no allowed pattern`);
    }
  }
  if (s.hostname && req.hostname && !firstMatch(s.hostname, req.hostname)) return deny('sandbox.hostname', `hostname ${q(req.hostname)} matches no allowed pattern`);
  return ALLOW;
}

/** Whether `policy` lets `rpc` with this request through; names the rule when it does not. */
export function evaluate(policy: AgentPolicy, rpc: string, req: unknown): Decision {
  if (rpc === 'Check') return ALLOW;
  if (rpc !== 'CreateSandbox') {
    if (policy.requests.deny.includes(rpc)) return deny('requests.deny', `${rpc} is denied`);
    if (policy.requests.default === 'deny' && !policy.requests.allow.includes(rpc)) return deny('requests.default', `${rpc} is not in requests.allow and the default is deny`);
  }
  const r = (req ?? {}) as never;
  switch (rpc) {
    case 'CreateSandbox': return checkCreateSandbox(policy, r);
    case 'CreateContainer': return checkCreateContainer(policy, r);
    case 'ExecProcess': return checkExecProcess(policy, r);
    default: return ALLOW;
  }
}

export interface PolicyGateOptions {
  /** sha256 (hex) the policy must have, from the kernel command line. */
  pinnedSha256?: string;
  /** Where a denial is logged (one JSON line); default the agent's console (stderr). */
  log?: (line: string) => void;
}

/** The `agent.policy_sha256=` value on a kernel command line, if any. */
export function pinnedPolicyHash(cmdline: string): string | undefined {
  const m = new RegExp(`(?:^|\\s)${POLICY_KERNEL_PARAM.replace('.', '\\.')}=(\\S*)`).exec(cmdline);
  return m ? m[1]!.toLowerCase() : undefined;
}

/**
 * This VM's policy and its one-time setting. States: open (no CreateSandbox
 * yet), sealed with a policy, sealed without one (the host gave none: all
 * allowed), or broken (the policy was refused: all but Check refused).
 */
export class PolicyGate {
  private sealed = false;
  private policy: AgentPolicy | undefined;
  private broken: string | undefined;
  private readonly log: (line: string) => void;

  constructor(private readonly opts: PolicyGateOptions = {}) {
    if (opts.pinnedSha256 !== undefined && !/^[0-9a-f]{64}$/.test(opts.pinnedSha256)) {
      // A garbled pin must not mean "no pin": nothing but Check will be served.
      this.broken = `${POLICY_KERNEL_PARAM} on the kernel command line is not a sha256 (64 hex digits)`;
    }
    this.log = opts.log ?? ((line) => process.stderr.write(line + '\n'));
  }

  static fromCmdline(cmdline: string, log?: (line: string) => void): PolicyGate {
    return new PolicyGate({ pinnedSha256: pinnedPolicyHash(cmdline), log });
  }

  /** The policy in force (undefined: none). */
  get current(): AgentPolicy | undefined {
    return this.policy;
  }

  /**
   * Lets the request through or throws AgentError: 'permission-denied' with
   * the rule's name (logged in the guest), or 'invalid' for a malformed
   * policy at CreateSandbox.
   */
  admit(rpc: string, req: unknown): void {
    if (rpc === 'Check') return;
    if (rpc === 'CreateSandbox') return this.setPolicy(req as api.CreateSandboxRequest);
    if (this.broken) this.refuse(rpc, 'policy', `no valid policy is in force (${this.broken}); every request but Check is refused`);
    if (!this.sealed) {
      if (this.opts.pinnedSha256) this.refuse(rpc, POLICY_KERNEL_PARAM, 'a policy is pinned on the kernel command line and no CreateSandbox has brought it yet; only Check is served');
      return;
    }
    if (!this.policy) return;
    const d = evaluate(this.policy, rpc, req);
    if (!d.allowed) this.refuse(rpc, d.rule, d.reason);
  }

  private setPolicy(req: api.CreateSandboxRequest): void {
    if (this.sealed) this.refuse('CreateSandbox', 'create_sandbox.once', 'the sandbox was already created; its policy is fixed for the life of this VM and cannot be replaced');
    // Sealed from here, whatever happens next: one chance, fail closed.
    this.sealed = true;
    if (this.broken) this.refuse('CreateSandbox', 'policy', this.broken);
    const text = req?.policy_json ?? '';
    const pin = this.opts.pinnedSha256;
    if (pin && policySha256(text) !== pin) {
      this.broken = 'the policy in CreateSandbox does not have the sha256 pinned on the kernel command line';
      this.refuse('CreateSandbox', POLICY_KERNEL_PARAM, this.broken);
    }
    if (text === '') return;
    try {
      this.policy = parsePolicy(text);
    } catch (err) {
      this.broken = `malformed policy: ${(err as Error).message}`;
      this.record('CreateSandbox', 'policy', this.broken);
      throw new AgentError('invalid', this.broken, { cause: err instanceof PolicyError ? err : undefined });
    }
    this.log(JSON.stringify({ time: new Date().toISOString(), level: 'info', msg: 'agent policy set', source: 'agent', module: 'policy', sha256: this.policy.sha256 }));
    const d = evaluate(this.policy, 'CreateSandbox', req);
    if (!d.allowed) {
      this.broken = `CreateSandbox itself was denied by its policy (${d.rule})`;
      this.refuse('CreateSandbox', d.rule, d.reason);
    }
  }

  private record(rpc: string, rule: string, reason: string): void {
    this.log(JSON.stringify({ time: new Date().toISOString(), level: 'warn', msg: 'policy denied request', source: 'agent', module: 'policy', rpc, rule, reason }));
  }

  private refuse(rpc: string, rule: string, reason: string): never {
    this.record(rpc, rule, reason);
    throw new AgentError('permission-denied', `policy denied ${rpc}: rule ${rule}: ${reason}`);
  }
}
