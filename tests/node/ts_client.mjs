// The official TypeScript SDK v2 client (@modelcontextprotocol/client) against authpool, for tests/test_mcp_node.py.
//
// Usage: node ts_client.mjs SDK_DIR (stdio PYTHON | http URL) MODE URI
//   SDK_DIR  the installed @modelcontextprotocol/client package directory
//   MODE     legacy (the initialize handshake) or auto (server/discover, then 2026-07-28)
//   URI      the resource to subscribe to
// The gateway key for http comes from AUTHPOOL_GATEWAY_KEY (never argv). Prints one JSON line per
// step on stdout: {"step": "ready", ...} once subscribed, then {"step": "updated", "uri": ...} when the
// server announces the change the test makes, then exits 0. Anything unexpected exits 1 with a line on stderr.
import { pathToFileURL } from "node:url";
import path from "node:path";

const [sdkDir, kind, target, mode, uri] = process.argv.slice(2);
const load = (file) => import(pathToFileURL(path.join(sdkDir, "dist", file)).href);
const sdk = await load("index.mjs");
const say = (doc) => process.stdout.write(JSON.stringify(doc) + "\n");

let transport;
if (kind === "stdio") {
  const { StdioClientTransport, getDefaultEnvironment } = await load("stdio.mjs");
  transport = new StdioClientTransport({
    command: target,
    args: ["-m", "authpool.server.cli", "serve"],
    env: { ...getDefaultEnvironment(), AUTHPOOL_HOME: process.env.AUTHPOOL_HOME,
           PYTHON_KEYRING_BACKEND: process.env.PYTHON_KEYRING_BACKEND },
    stderr: "inherit",  // the server's log joins ours, for the test to scan for secrets
  });
} else {
  transport = new sdk.StreamableHTTPClientTransport(new URL(target), {
    requestInit: { headers: { Authorization: `Bearer ${process.env.AUTHPOOL_GATEWAY_KEY}` } },
  });
}

const client = new sdk.Client({ name: "authpool-ts-test", version: "1.0.0" },
                              { capabilities: {}, versionNegotiation: { mode } });
let announced;
const updated = new Promise((resolve) => { announced = resolve; });
client.setNotificationHandler("notifications/resources/updated", (n) => {
  if (n.params.uri === uri) announced(n.params.uri);
});

try {
  await client.connect(transport);
  const tools = await client.listTools();
  const accounts = await client.callTool({ name: "list_accounts", arguments: {} });
  if (accounts.isError) throw new Error("list_accounts failed: " + JSON.stringify(accounts.content));
  const resource = await client.readResource({ uri });
  let subscription;
  if (mode === "legacy") {
    await client.subscribeResource({ uri });
  } else {
    subscription = await client.listen({ resourceSubscriptions: [uri] });
  }
  say({ step: "ready", protocol: client.getNegotiatedProtocolVersion(), tools: tools.tools.map((t) => t.name),
        accounts: accounts.structuredContent.accounts.map((a) => a.name),
        resource: JSON.parse(resource.contents[0].text).accounts?.length ?? null });
  const which = await Promise.race([updated, new Promise((_, fail) => setTimeout(
    () => fail(new Error("no notifications/resources/updated within 60s")), 60_000))]);
  say({ step: "updated", uri: which });
  if (subscription) await subscription.close();
  await client.close();
  process.exit(0);
} catch (e) {
  process.stderr.write(`ts_client: ${e?.stack ?? e}\n`);
  process.exit(1);
}
