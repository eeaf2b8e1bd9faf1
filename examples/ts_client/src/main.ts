#!/usr/bin/env node
/**
 * heat-ts-client: creates a Session from a Session Template, follows it live with WatchSession
 * (resuming from its cursor after a disconnect), then prints each node's outputs.
 *
 *   node dist/main.js --template csv-totals [--param day=mon] [--label team=finance]
 *   node dist/main.js --session NAME [--cursor C]      # follow an existing Session
 *
 * --address (HEAT_ADDRESS, default 127.0.0.1:50051), --token (HEAT_TOKEN: sent as a bearer
 * token), --json (one JSON object per line on stdout, for programs). Exit status: 0 when the
 * Session succeeded, 1 when it failed or was cancelled, 2 for bad arguments, 3 for an error.
 */
import { parseArgs } from "node:util";
import type { JsonObject } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import {
  NodeState,
  SessionState,
  type Node,
  type WatchSessionResponse,
} from "@heat/scheduler-api";
import { connect, follow, outputs, type WatchEvent } from "./client.js";

const USAGE = `usage: heat-ts-client (--template NAME | --session NAME [--cursor C])
       [--param KEY=VALUE]... [--label KEY=VALUE]... [--request-id ID]
       [--address HOST:PORT] [--token TOKEN] [--json]`;

class UsageError extends Error {}

function pairs(items: string[] | undefined, what: string): Array<[string, string]> {
  return (items ?? []).map((item) => {
    const at = item.indexOf("=");
    if (at <= 0) {
      throw new UsageError(`--${what} wants KEY=VALUE, not ${JSON.stringify(item)}`);
    }
    return [item.slice(0, at), item.slice(at + 1)];
  });
}

/** A parameter's value: JSON when it parses (3, true, {"a": 1}), else the text itself. */
function parameterValue(text: string): JsonObject[string] {
  try {
    return JSON.parse(text) as JsonObject[string];
  } catch {
    return text;
  }
}

function stateName(state: SessionState): string {
  return SessionState[state] ?? String(state);
}

function nodeLine(node: Node): string {
  const error = node.error?.message ? ` (${node.error.message})` : "";
  return `${node.key} ${NodeState[node.state] ?? node.state}${error}`;
}

/** Prints the watch for people, or as JSON lines for programs. */
function printer(json: boolean): (event: WatchEvent | { kind: "created"; name: string }) => void {
  const line = (value: object): void => void process.stdout.write(JSON.stringify(value) + "\n");
  return (event) => {
    switch (event.kind) {
      case "created":
        return json ? line({ event: "created", session: event.name }) : console.log(`created ${event.name}`);
      case "disconnected": {
        const { cursor, reason, retryInMs } = event;
        if (json) {
          return line({ event: "reconnecting", cursor, reason, retryInMs });
        }
        return console.error(`disconnected (${reason}); resuming from cursor ${cursor || "(none)"} in ${retryInMs} ms`);
      }
      case "message":
        return json ? line(watchJson(event.message)) : console.log(watchText(event.message));
    }
  };
}

function watchJson(message: WatchSessionResponse): object {
  const cursor = message.cursor;
  switch (message.event.case) {
    case "snapshot": {
      const session = message.event.value;
      const nodes = Object.fromEntries(session.nodes.map((n) => [n.key, NodeState[n.state]]));
      return { event: "snapshot", cursor, state: stateName(session.state), nodes };
    }
    case "nodeChange": {
      const node = message.event.value.node;
      return { event: "node", cursor, key: node?.key, state: node && NodeState[node.state] };
    }
    case "sessionChange":
      return { event: "session", cursor, state: stateName(message.event.value.state) };
    default:
      return { event: "unknown", cursor };
  }
}

function watchText(message: WatchSessionResponse): string {
  const cursor = `[${message.cursor}]`;
  switch (message.event.case) {
    case "snapshot": {
      const session = message.event.value;
      return `${cursor} ${session.name} ${stateName(session.state)}: ${session.nodes.map(nodeLine).join(", ")}`;
    }
    case "nodeChange":
      return `${cursor} ${message.event.value.node ? nodeLine(message.event.value.node) : "?"}`;
    case "sessionChange": {
      const change = message.event.value;
      const reason = change.stateReason ? ` (${change.stateReason})` : "";
      return `${cursor} session ${stateName(change.state)}${reason}`;
    }
    default:
      return `${cursor} (an event this client does not know)`;
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      template: { type: "string" },
      session: { type: "string" },
      cursor: { type: "string" },
      param: { type: "string", multiple: true },
      label: { type: "string", multiple: true },
      "request-id": { type: "string" },
      address: { type: "string", default: process.env.HEAT_ADDRESS || "127.0.0.1:50051" },
      token: { type: "string", default: process.env.HEAT_TOKEN || "" },
      json: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (!values.template === !values.session) {
    throw new UsageError("give either --template (create a Session) or --session (follow one)");
  }
  const print = printer(values.json);
  const sessions = connect({ address: values.address, token: values.token || undefined });

  let name = values.session ?? "";
  if (values.template) {
    const parameters: JsonObject = Object.fromEntries(
      pairs(values.param, "param").map(([key, text]) => [key, parameterValue(text)]),
    );
    const created = await sessions.createSession({
      source: { case: "sessionTemplate", value: values.template },
      parameters,
      labels: Object.fromEntries(pairs(values.label, "label")),
      requestId: values["request-id"] ?? "",
    });
    name = created.session?.name ?? "";
    print({ kind: "created", name });
  }

  const stop = new AbortController();
  let cursor = values.cursor ?? "";
  process.once("SIGINT", () => stop.abort());
  try {
    for await (const event of follow(sessions, name, { cursor, signal: stop.signal })) {
      if (event.kind === "message") {
        cursor = event.message.cursor;
      }
      print(event);
    }
  } catch (error) {
    if (stop.signal.aborted) {
      console.error(`interrupted; resume with --session ${name} --cursor ${cursor}`);
      return 130;
    }
    throw error;
  }

  const { session } = await sessions.getSession({ name });
  if (!session) {
    throw new Error(`GetSession returned no Session for ${name}`);
  }
  const state = stateName(session.state);
  if (values.json) {
    const result = { event: "outputs", session: name, state, outputs: outputs(session) };
    process.stdout.write(JSON.stringify(result) + "\n");
  } else {
    console.log(`${name} ${state}`);
    for (const [key, value] of Object.entries(outputs(session))) {
      console.log(`  ${key}: ${JSON.stringify(value)}`);
    }
  }
  return session.state === SessionState.SUCCEEDED ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof UsageError || (error instanceof TypeError && "code" in error)) {
      console.error(`${error.message}\n${USAGE}`);
      process.exit(2);
    }
    const text = error instanceof ConnectError ? error.message : String(error);
    console.error(`error: ${text}`);
    process.exit(3);
  },
);
