// One Web Worker is one volunteered core. It runs Colonnade's Rust worker,
// compiled to WebAssembly, and holds its own WebSocket: browsers throttle a
// background tab's main thread but keep its workers running.
// Laid out as in the repository (web/worker.js, web/pkg/…), so any static
// host of the repository's root serves the page too.
import init, { Volunteer, bench } from './pkg/colonnade_web.js';

const ready = init();
let volunteer = null;

self.onmessage = async (event) => {
  await ready;
  const msg = event.data;
  switch (msg.type) {
    case 'start':
      volunteer = new Volunteer(msg.url, msg.name, msg.memory, (status) => self.postMessage({ type: 'status', status }));
      break;
    case 'pause':
      if (volunteer) volunteer.pause();
      break;
    case 'resume':
      if (volunteer) volunteer.resume();
      break;
    case 'stop':
      if (volunteer) volunteer.stop();
      volunteer = null;
      self.postMessage({ type: 'stopped' });
      break;
    case 'bench':
      self.postMessage({ type: 'bench', n: msg.n, result: Array.from(bench(msg.n)) });
      break;
  }
};
self.postMessage({ type: 'loaded' });
