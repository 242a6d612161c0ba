// Runs one agent turn with @ag-ui/client's HttpAgent against URL; prints the events it received as JSON.
const { HttpAgent } = require("@ag-ui/client");

async function main() {
  const [url, threadId, runId] = process.argv.slice(2);
  const agent = new HttpAgent({
    url,
    threadId,
    initialMessages: [{ id: "u1", role: "user", content: "What is a cursor?" }],
  });
  const events = [];
  const result = await agent.runAgent({ runId }, { onEvent: ({ event }) => { events.push(event); } });
  process.stdout.write(JSON.stringify({ events, messages: agent.messages, newMessages: result.newMessages }));
}

main().catch((err) => { console.error(err); process.exit(1); });
