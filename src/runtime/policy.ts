/**
 * Host side of the agent policy: where a sandbox's policy comes from (a
 * file — `kata-ts run --policy FILE` or `[agent.kata] policy_file` — or the
 * pod annotation io.katacontainers.config.agent.policy, base64 JSON, in the
 * shim) and its validation before a VM boots, so a malformed policy is one
 * clear error naming its source. The agent parses it again and is the
 * authority (src/agent/policy.ts); the format is src/protocols/agent-policy.ts.
 */
import * as fs from 'node:fs';
import { KataError, errorMessage } from '../common/errors';
import { parsePolicy, policySha256, POLICY_ANNOTATION } from '../protocols/agent-policy';

export class HostPolicyError extends KataError<'unreadable' | 'malformed'> {}

/** A validated policy as the host sends it: the exact text, its sha256 and where it came from. */
export interface HostPolicy {
  text: string;
  sha256: string;
  source: string;
}

/** Validate policy text; `source` names it in the error. */
export function hostPolicy(text: string, source: string): HostPolicy {
  try {
    parsePolicy(text);
  } catch (err) {
    throw new HostPolicyError('malformed', `agent policy ${source}: ${errorMessage(err)}`, { cause: err });
  }
  return { text, sha256: policySha256(text), source };
}

export function policyFromFile(file: string): HostPolicy {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new HostPolicyError('unreadable', `agent policy ${file}: ${errorMessage(err)}`, { cause: err });
  }
  return hostPolicy(text, file);
}

/** The policy in a pod's annotations (base64 JSON), or undefined when there is none. */
export function policyFromAnnotations(annotations: Record<string, string> | undefined): HostPolicy | undefined {
  const b64 = annotations?.[POLICY_ANNOTATION];
  if (b64 === undefined) return undefined;
  const compact = b64.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 !== 0) {
    throw new HostPolicyError('malformed', `agent policy annotation ${POLICY_ANNOTATION}: not base64`);
  }
  return hostPolicy(Buffer.from(compact, 'base64').toString('utf8'), `annotation ${POLICY_ANNOTATION}`);
}
