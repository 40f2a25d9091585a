// worker.js: Node.js with a worker_thread (V8's heap and code are marked
// MADV_DONTFORK). The worker computes a deterministic hash chain step by
// step and posts it; the main thread prints one line per step and a final
// line covering every step's result.
//
// Usage: node worker.js [STEPS [PAUSE_MS]]
'use strict';
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');

function mix(x) {
  // 32-bit xor-shift-multiply, in plain numbers (deterministic everywhere).
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

if (isMainThread) {
  const steps = parseInt(process.argv[2] || '40', 10);
  const pause = parseInt(process.argv[3] || '-1', 10);
  const worker = new Worker(__filename, { workerData: { steps, pause } });
  // A heap that grows with the run: objects the restarted V8 must find whole.
  const kept = new Map();
  let running = 0x5eed;
  worker.on('message', (m) => {
    kept.set(m.step, { h: m.h, s: 'v' + m.h.toString(16) });
    let acc = 0;
    for (const [k, v] of kept) acc = mix(acc ^ k ^ v.h ^ v.s.length);
    running = mix(running ^ acc);
    process.stdout.write(`step ${m.step} worker ${m.h.toString(16)} hash ${running.toString(16)}\n`);
  });
  worker.on('exit', (code) => {
    process.stdout.write(`final ${running.toString(16)} exit ${code}\n`);
  });
} else {
  const { steps, pause } = workerData;
  const arr = new Uint32Array(1 << 18);
  for (let i = 0; i < arr.length; i++) arr[i] = mix(i);
  let step = 0;
  const tick = () => {
    step++;
    let h = step;
    for (let i = step % 5; i < arr.length; i += 5) {
      arr[i] = mix(arr[i] + step);
      h = mix(h ^ arr[i]);
    }
    parentPort.postMessage({ step, h });
    if (step < steps) setTimeout(tick, pause >= 0 ? pause : 50 + (step * 37) % 51);
  };
  tick();
}
