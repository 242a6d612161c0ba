// @durable-streams/client against a gateway stream; prints JSON on stdout.
//   node ds_client.cjs read URL OFFSET LIVE COUNT   read from OFFSET (live: sse | long-poll) until COUNT
//                                                   messages: {"items": [...], "offset": last offset}
//   node ds_client.cjs append URL PRODUCER JSON...  append each JSON message with an IdempotentProducer
const { stream, DurableStream, IdempotentProducer } = require("@durable-streams/client");

async function read(url, offset, live, count) {
  const controller = new AbortController();
  const res = await stream({ url, offset, live, signal: controller.signal });
  const items = [];
  let last = offset;
  await new Promise((resolve) => {
    res.subscribeJson(async (batch) => {
      items.push(...batch.items);
      last = batch.offset;
      if (items.length >= count) resolve();
    });
  });
  controller.abort();
  return { items, offset: last };
}

async function append(url, producerId, messages) {
  const handle = new DurableStream({ url, contentType: "application/json" });
  const producer = new IdempotentProducer(handle, producerId, {
    autoClaim: true, onError: (err) => { console.error(err); process.exit(1); },
  });
  for (const m of messages) producer.append(m);
  await producer.flush();
  await producer.detach(); // a session stays open: close() would end the stream
  return { appended: messages.length };
}

const [mode, url, ...rest] = process.argv.slice(2);
const job = mode === "read" ? read(url, rest[0], rest[1], Number(rest[2])) : append(url, rest[0], rest.slice(1));
job.then((out) => { process.stdout.write(JSON.stringify(out)); process.exit(0); },
         (err) => { console.error(err); process.exit(1); });
