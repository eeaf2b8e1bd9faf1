/**
 * A small client of heat-scheduler's SessionService, built on the generated package
 * `@heat/scheduler-api` and Connect's gRPC transport for Node.js (HTTP/2).
 *
 * - `connect()` makes the client; a token becomes `authorization: Bearer <token>` on every call.
 * - `follow()` watches a Session until it ends and survives disconnects: after a dropped stream
 *   or a scheduler restart it reconnects (with backoff) and resumes from the last cursor it
 *   received, so no change is missed and none is repeated.
 */
import { toJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  SessionService,
  SessionState,
  type Session,
  type WatchSessionResponse,
} from "@heat/scheduler-api";

export type Sessions = Client<typeof SessionService>;

export interface ConnectOptions {
  /** The scheduler's gRPC address, `host:port`. */
  address: string;
  /** Sent as `authorization: Bearer <token>` with every call, when given. */
  token?: string | undefined;
  /** TLS instead of plaintext HTTP/2. */
  tls?: boolean | undefined;
}

/** A SessionService client speaking gRPC to the scheduler at `options.address`. */
export function connect(options: ConnectOptions): Sessions {
  const transport = createGrpcTransport({
    baseUrl: `${options.tls ? "https" : "http"}://${options.address}`,
    interceptors: options.token ? [bearer(options.token)] : [],
  });
  return createClient(SessionService, transport);
}

/** Adds `authorization: Bearer <token>` to every call. */
export function bearer(token: string): Interceptor {
  return (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

export type WatchEvent =
  | { kind: "message"; message: WatchSessionResponse }
  | { kind: "disconnected"; cursor: string; reason: string; retryInMs: number };

export interface FollowOptions {
  /** Resume after this cursor (from an earlier watch); empty starts with a snapshot. */
  cursor?: string | undefined;
  /** Give up after being disconnected this long without a message (default 2 minutes). */
  maxDisconnectedMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

const FINAL = new Set([SessionState.SUCCEEDED, SessionState.FAILED, SessionState.CANCELLED]);

/** Statuses that another try would get again: the caller's mistake, not the network's. */
const FATAL = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.FailedPrecondition,
  Code.Unimplemented,
]);

/** Every message of the Session's watch until it ends, across disconnects. */
export async function* follow(
  sessions: Sessions,
  name: string,
  options: FollowOptions = {},
): AsyncGenerator<WatchEvent> {
  let cursor = options.cursor ?? "";
  let backoffMs = 100;
  let lostAt: number | undefined;
  const maxDisconnectedMs = options.maxDisconnectedMs ?? 120_000;
  for (;;) {
    let reason: string;
    try {
      const call = options.signal ? { signal: options.signal } : {};
      const stream = sessions.watchSession({ name, cursor }, call);
      for await (const message of stream) {
        cursor = message.cursor;
        backoffMs = 100;
        lostAt = undefined;
        yield { kind: "message", message };
        if (ended(message)) {
          return;
        }
      }
      // The stream ended before the Session did: the scheduler is shutting down.
      reason = "the scheduler ended the stream";
    } catch (error) {
      const failure = ConnectError.from(error);
      if (FATAL.has(failure.code) || options.signal?.aborted) {
        throw failure;
      }
      reason = failure.message;
    }
    lostAt ??= Date.now();
    if (Date.now() - lostAt > maxDisconnectedMs) {
      throw new Error(`no answer from the scheduler for ${maxDisconnectedMs} ms: ${reason}`);
    }
    const retryInMs = Math.round(Math.random() * backoffMs); // full jitter
    yield { kind: "disconnected", cursor, reason, retryInMs };
    await new Promise((resolve) => setTimeout(resolve, retryInMs));
    backoffMs = Math.min(backoffMs * 2, 5_000);
  }
}

function ended(message: WatchSessionResponse): boolean {
  switch (message.event.case) {
    case "snapshot":
    case "sessionChange":
      return FINAL.has(message.event.value.state);
    default:
      return false;
  }
}

/** Each node's outputs as plain JSON, by node key. */
export function outputs(session: Session): Record<string, JsonValue> {
  const byKey: Record<string, JsonValue> = {};
  for (const node of session.nodes) {
    byKey[node.key] = node.outputs ? toJson(ValueSchema, node.outputs) : null;
  }
  return byKey;
}
