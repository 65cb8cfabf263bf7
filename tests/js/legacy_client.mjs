// The widely deployed legacy mini-program client (seed 003), exactly as DESIGN.md quotes
// its per-callback logic, driven over a raw socket so the test controls how the HTTP
// chunks the gateway wrote are grouped into `onChunkReceived` callbacks.
//
// usage: node legacy_client.mjs HOST PORT TOKEN MESSAGE MODE SEED
//   MODE per-chunk: one callback per HTTP chunk
//   MODE merged:    callbacks that merge 1–4 consecutive chunks (the terminal `0` stays
//                   its own callback: this client cannot parse it merged with a frame)
// prints {"text": …, "done": …, "error": …, "callbacks": …} as JSON.
import net from 'node:net';

const [host, port, token, message, mode, seedText] = process.argv.slice(2);
let seed = Number(seedText) || 1;
const random = () => {
  // xorshift32: reproducible groupings per seed.
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed / 4294967296;
};

// The legacy client's callback, verbatim in behaviour.
const state = { text: '', done: false, error: null, callbacks: 0 };
function onChunk(text) {
  state.callbacks += 1;
  if (text.indexOf('error') > 0) {
    state.error = JSON.parse(text.replace('event: error\ndata: ', '').replace('\r\n', ''));
  } else if (text.includes('success')) {
    for (const piece of text.split('success: ')) {
      if (piece) state.text += JSON.parse(piece).content;
    }
  } else if (text.replace('\r\n', '') == 0) {
    state.done = true;
  }
}

const body = Buffer.from(JSON.stringify({ message }));
const socket = net.connect(Number(port), host, () => {
  socket.write(
    `POST /api/chat?client=mp HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n` +
      `Authorization: Bearer ${token}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\n\r\n`,
  );
  socket.write(body);
});
const parts = [];
socket.on('data', (d) => parts.push(d));
socket.on('end', () => {
  const raw = Buffer.concat(parts);
  const headEnd = raw.indexOf('\r\n\r\n');
  let pos = headEnd + 4;
  const chunks = [];
  for (;;) {
    const lineEnd = raw.indexOf('\r\n', pos);
    const size = parseInt(raw.subarray(pos, lineEnd).toString('latin1'), 16);
    if (size === 0) break;
    chunks.push(raw.subarray(lineEnd + 2, lineEnd + 2 + size));
    pos = lineEnd + 2 + size + 2;
  }
  const terminal = chunks.pop();
  if (mode === 'merged') {
    let i = 0;
    while (i < chunks.length) {
      const n = 1 + Math.floor(random() * 4);
      onChunk(Buffer.concat(chunks.slice(i, i + n)).toString('utf8'));
      i += n;
    }
  } else {
    for (const c of chunks) onChunk(c.toString('utf8'));
  }
  if (terminal) onChunk(terminal.toString('utf8'));
  process.stdout.write(JSON.stringify(state));
});
socket.on('error', (e) => {
  process.stderr.write(String(e));
  process.exit(2);
});
