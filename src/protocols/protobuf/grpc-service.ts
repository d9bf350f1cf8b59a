/**
 * A @grpc/grpc-js ServiceDefinition for a service of a schema.ts schema,
 * with codec.ts as the (de)serializers: what grpc.loadPackageDefinition
 * builds from @grpc/proto-loader, without loading either at run time.
 * Paths are `/<package>.<Service>/<Method>`, as every gRPC peer expects.
 */
import type * as grpc from '@grpc/grpc-js';
import { decodeMessage, encodeMessage } from './codec';
import type { ProtoSchema } from './schema';
import { KataError } from '../../common/errors';

export function grpcServiceDefinition(schema: ProtoSchema, fullName: string): grpc.ServiceDefinition {
  const svc = schema.services.get(fullName);
  if (!svc) throw new KataError('unresolved', `service ${fullName} is not in the schema (has: ${[...schema.services.keys()].join(', ') || 'none'})`);
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of svc.methods) {
    def[m.name] = {
      path: `/${svc.fullName}/${m.name}`,
      requestStream: m.requestStream,
      responseStream: m.responseStream,
      requestSerialize: (v: unknown) => encodeMessage(m.request, v as Record<string, unknown>),
      requestDeserialize: (b: Buffer) => decodeMessage(m.request, b),
      responseSerialize: (v: unknown) => encodeMessage(m.response, v as Record<string, unknown>),
      responseDeserialize: (b: Buffer) => decodeMessage(m.response, b),
      originalName: m.name.charAt(0).toLowerCase() + m.name.slice(1),
    };
  }
  return def as grpc.ServiceDefinition;
}
