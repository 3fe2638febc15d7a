/**
 * The `google.rpc` details of a Xiaohe Identity error, decoded in Node.
 *
 * Every non-OK status carries a `google.rpc.Status` in the `grpc-status-details-bin`
 * trailer: an ErrorInfo (domain `identity.xiaohe`, a stable `reason`, the request id
 * in its metadata), BadRequest field violations for INVALID_ARGUMENT, RetryInfo for
 * RESOURCE_EXHAUSTED and UNAVAILABLE, and QuotaFailure naming the limit that was hit.
 * Branch on `reason`, never on the message text.
 */
import { type ServiceError, status as GrpcStatus } from "@grpc/grpc-js";

import { Status } from "./gen/google/rpc/status";
import { BadRequest, ErrorInfo, QuotaFailure, RetryInfo } from "./gen/google/rpc/error_details";

/** The trailer that holds the serialized `google.rpc.Status`. */
export const DETAILS_TRAILER = "grpc-status-details-bin";

/** The domain of every ErrorInfo this service sends. */
export const ERROR_DOMAIN = "identity.xiaohe";

/** What a failed call reports, with each detail decoded when the server sent it. */
export interface ErrorDetails {
  code: GrpcStatus;
  message: string;
  /** ErrorInfo's reason (e.g. `RATE_LIMITED`), `""` if the status had no ErrorInfo. */
  reason: string;
  errorInfo?: ErrorInfo;
  badRequest?: BadRequest;
  retryInfo?: RetryInfo;
  quotaFailure?: QuotaFailure;
}

/** The message name of an `Any`'s type URL: the part after its last `/`. */
function messageName(typeUrl: string): string {
  return typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
}

/** Decode the status details of a failed call (an error without them yields code and message). */
export function errorDetails(error: ServiceError): ErrorDetails {
  const found: ErrorDetails = { code: error.code, message: error.details, reason: "" };
  const raw = error.metadata?.get(DETAILS_TRAILER)[0];
  if (!Buffer.isBuffer(raw)) {
    return found;
  }
  const status = Status.decode(raw);
  found.message = status.message;
  for (const detail of status.details) {
    switch (messageName(detail.typeUrl)) {
      case "google.rpc.ErrorInfo":
        found.errorInfo = ErrorInfo.decode(detail.value);
        found.reason = found.errorInfo.reason;
        break;
      case "google.rpc.BadRequest":
        found.badRequest = BadRequest.decode(detail.value);
        break;
      case "google.rpc.RetryInfo":
        found.retryInfo = RetryInfo.decode(detail.value);
        break;
      case "google.rpc.QuotaFailure":
        found.quotaFailure = QuotaFailure.decode(detail.value);
        break;
      default:
        break; // a detail type this client does not know: ignore it
    }
  }
  return found;
}

/** Seconds to wait before retrying, from RetryInfo; undefined if the server gave none. */
export function retryAfterSeconds(details: ErrorDetails): number | undefined {
  const delay = details.retryInfo?.retryDelay;
  return delay === undefined ? undefined : delay.seconds + delay.nanos / 1e9;
}

/** The request fields that BadRequest names, in the server's order. */
export function badFields(details: ErrorDetails): string[] {
  return (details.badRequest?.fieldViolations ?? []).map((v) => v.field);
}

/** Whether `error` is a gRPC failure (a ServiceError) rather than a local exception. */
export function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number";
}
