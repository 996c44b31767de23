// Peer queue drivers for bench/run: BullMQ on Redis and pg-boss on PostgreSQL, measured the way
// keel is (durable enqueue with N producers, full lifecycle of N jobs, enqueue-to-start latency at
// a fixed rate, open loop). Results are appended to --json FILE as the same JSON-lines records
// `keel bench` writes, so `keel bench report` lays them side by side.
//
//   node peer.mjs --system bullmq|bullmq-everysec|pgboss --port P --json FILE \
//        --mode enqueue   --producers N --seconds S
//        --mode lifecycle --jobs N --producers N
//        --mode latency   --rate R --seconds S
//
// The worker runs in a child process of its own (as keel's dispatcher runs apart from its
// producers), so one Node event loop is not asked to both produce and consume.
// Every loop is bounded in count and time; only 127.0.0.1 is contacted.

import { fork } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const HOST = '127.0.0.1';
const WORKER_CONCURRENCY = 64; // keel: queue.concurrency = 64
// 8 workers × 8 jobs per fetch = 64 jobs in flight, as keel's and BullMQ's 64.
const PGBOSS_LOCAL_CONCURRENCY = Number(process.env.PGBOSS_LOCAL_CONCURRENCY ?? 8);
const PGBOSS_BATCH = Number(process.env.PGBOSS_BATCH ?? 8);

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i];
    if (!key.startsWith('--')) throw new Error(`unexpected argument ${key}`);
    out[key.slice(2)] = argv[i + 1];
    i += 1;
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const system = args.system;
const port = Number(args.port);
const mode = args.mode;
const queueName = args.queue ?? `bench-${mode}-${Date.now()}`;
if (!['bullmq', 'bullmq-everysec', 'pgboss'].includes(system)) throw new Error(`--system ${system}?`);
if (!Number.isInteger(port)) throw new Error('--port is required');

/** Microseconds since the epoch; the same clock as keel's driver and the worker child. */
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function record(id, value, unit, note = '') {
  const line = JSON.stringify({ id, system, value, unit, note });
  console.log(`  ${id.padEnd(28)} ${system.padEnd(16)} ${value.toFixed(2)} ${unit}`);
  if (args.json) appendFileSync(args.json, `${line}\n`);
}

function percentile(sorted, q) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// ---- the two queues behind one small interface -------------------------------------------

async function openBullmq() {
  const { Queue, Worker } = await import('bullmq');
  const { Redis } = await import('ioredis');
  const connection = { host: HOST, port, maxRetriesPerRequest: null };
  let queue;
  let worker;
  let admin;
  return {
    async producer() {
      queue = new Queue(queueName, { connection });
      await queue.waitUntilReady();
      admin = new Redis({ host: HOST, port });
    },
    send: (data) => queue.add('job', data),
    completed: () => queue.getCompletedCount(),
    async dataBytes() {
      // The dataset lives in memory (the AOF is rewritten to match it now and then, so its
      // size at any moment is no stable measure).
      const info = await admin.info('memory');
      const m = /used_memory:(\d+)/.exec(info);
      return m ? Number(m[1]) : 0;
    },
    async work(onStart) {
      worker = new Worker(
        queueName,
        async (job) => {
          onStart([job.data]);
        },
        { connection, concurrency: WORKER_CONCURRENCY },
      );
      await worker.waitUntilReady();
    },
    async close() {
      await worker?.close();
      await queue?.close();
      admin?.disconnect();
    },
  };
}

async function openPgboss() {
  const { PgBoss } = await import('pg-boss');
  const pg = (await import('pg')).default;
  const options = {
    host: HOST,
    port,
    user: 'postgres',
    database: 'postgres',
    max: 70,
    useListenNotify: true,
    schedule: false,
  };
  const boss = new PgBoss(options);
  boss.on('error', (e) => console.error(`pg-boss: ${e.message}`));
  boss.on('warning', (w) => console.error(`pg-boss warning: ${w.message ?? JSON.stringify(w)}`));
  let sql;
  return {
    async producer() {
      await boss.start();
      await boss.createQueue(queueName, { notify: true });
      sql = new pg.Pool({ host: HOST, port, user: 'postgres', database: 'postgres', max: 1 });
    },
    send: (data) => boss.send(queueName, data),
    async completed() {
      const r = await sql.query(
        "select count(*)::int as n from pgboss.job where name = $1 and state = 'completed'",
        [queueName],
      );
      return r.rows[0].n;
    },
    async dataBytes() {
      const r = await sql.query('select pg_database_size(current_database())::bigint as n');
      return Number(r.rows[0].n);
    },
    async work(onStart) {
      await boss.start();
      await boss.work(
        queueName,
        {
          localConcurrency: PGBOSS_LOCAL_CONCURRENCY,
          batchSize: PGBOSS_BATCH,
          pollingIntervalSeconds: 0.5,
          burstWhenBatchFull: true,
        },
        async (jobs) => {
          onStart(jobs.map((j) => j.data));
        },
      );
    },
    async close() {
      await sql?.end();
      await boss.stop({ graceful: false, timeout: 2000 });
    },
  };
}

const open = () => (system === 'pgboss' ? openPgboss() : openBullmq());

// ---- the worker child ---------------------------------------------------------------------

async function runWorker() {
  const q = await open();
  const lags = [];
  let started = 0;
  await q.work((batch) => {
    const now = nowUs();
    for (const data of batch) {
      started += 1;
      if (typeof data?.t === 'number') lags.push(now - data.t);
    }
  });
  process.on('message', async (msg) => {
    if (msg === 'report') {
      lags.sort((a, b) => a - b);
      process.send({
        started,
        p50: percentile(lags, 0.5),
        p99: percentile(lags, 0.99),
        max: lags.length ? lags[lags.length - 1] : 0,
        first: null,
      });
    } else if (msg === 'count') {
      process.send({ started });
    } else if (msg === 'stop') {
      await q.close();
      process.exit(0);
    }
  });
  process.send('ready');
}

function startWorker() {
  const child = fork(process.argv[1], [...process.argv.slice(2), '--role', 'worker', '--queue', queueName], {
    execPath: process.execPath,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const pending = [];
  child.on('message', (msg) => pending.shift()?.(msg));
  const ask = (msg) =>
    new Promise((resolve) => {
      pending.push(resolve);
      if (msg !== null) child.send(msg);
    });
  const ready = ask(null);
  return {
    ready,
    ask,
    async stop() {
      child.send('stop');
      const exited = new Promise((resolve) => child.once('exit', resolve));
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// ---- the measurements ---------------------------------------------------------------------

async function enqueue(q) {
  const producers = Number(args.producers ?? 1);
  const seconds = Number(args.seconds ?? 3);
  await q.producer();
  const acks = [];
  let count = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: producers }, async () => {
      while (performance.now() < deadline) {
        const t0 = performance.now();
        await q.send({ n: 1 });
        acks.push(performance.now() - t0);
        count += 1;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  record(
    `enqueue.http.c${producers}`,
    count / elapsed,
    'jobs/s',
    `${producers} producer loop(s) awaiting each send in one Node process, ${seconds}s, no worker running`,
  );
  if (producers === 64) {
    acks.sort((a, b) => a - b);
    record('enqueue.http.c64.p99', percentile(acks, 0.99), 'ms', 'acknowledgement latency of a send');
  }
}

async function lifecycle(q) {
  const jobs = Number(args.jobs ?? 100000);
  const producers = Number(args.producers ?? 64);
  const timeoutMs = Number(args['timeout-seconds'] ?? 900) * 1000;
  await q.producer();
  const worker = startWorker();
  await worker.ready;
  const before = await q.dataBytes();
  let remaining = jobs;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: producers }, async () => {
      while (remaining > 0) {
        remaining -= 1;
        await q.send({ t: nowUs() });
      }
    }),
  );
  const submitted = (performance.now() - started) / 1000;
  let done = 0;
  while (done < jobs) {
    if (performance.now() - started > timeoutMs) throw new Error(`only ${done} of ${jobs} completed in time`);
    await sleep(20);
    done = await q.completed();
  }
  const elapsed = (performance.now() - started) / 1000;
  const after = await q.dataBytes();
  await worker.stop();
  record(
    'lifecycle',
    jobs / elapsed,
    'jobs/s',
    `${jobs} jobs: ${producers} producers send while the worker process (no-op handler) takes and completes them; timed to the last completion (all sent after ${submitted.toFixed(1)}s)`,
  );
  record(
    'data.per_million',
    ((after - before) / jobs) * 1e6 / (1024 * 1024),
    'MiB',
    `growth of the ${system === 'pgboss' ? 'database (pg_database_size)' : 'Redis dataset in memory (used_memory)'} over the lifecycle of ${jobs} jobs, finished jobs kept (the default), extrapolated to 10^6`,
  );
}

async function latency(q) {
  const rate = Number(args.rate ?? 1000);
  const seconds = Number(args.seconds ?? 60);
  const total = rate * seconds;
  await q.producer();
  const worker = startWorker();
  await worker.ready;
  const t0 = performance.now() + 50;
  const t0Us = Math.round((performance.timeOrigin + t0) * 1000);
  let sent = 0;
  let failed = 0;
  // Open loop: every tick sends every job that is due by now, without waiting for answers;
  // each job carries the time it was due, so a stall is charged to every job it delays.
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * rate) / 1000) + 1);
    while (sent < due) {
      const t = t0Us + Math.round((sent * 1e6) / rate);
      q.send({ t }).catch((e) => {
        if (failed === 0) console.error(`peer ${system}: a send failed: ${e.message}`);
        failed += 1;
      });
      sent += 1;
    }
    await sleep(1);
  }
  const deadline = performance.now() + 120000;
  let report = await worker.ask('count');
  while (report.started < total && performance.now() < deadline) {
    await sleep(20);
    report = await worker.ask('count');
  }
  report = await worker.ask('report');
  const spanS = (nowUs() - t0Us) / 1e6;
  await worker.stop();
  let note = `${rate} jobs/s offered for ${seconds}s, open loop (sends not awaited); latency from the time each job was due to be sent to its handler starting`;
  if (report.started < total || failed > 0) {
    note += `; only ${report.started} of ${total} started within 120 s after the offered load ended (${failed} sends failed): the rest are not in the percentiles, which they would raise`;
  }
  record('latency.rate', report.started / spanS, 'jobs/s', `${report.started} of ${total} started; ${note}`);
  record('latency.p50', report.p50 / 1000, 'ms', note);
  record('latency.p99', report.p99 / 1000, 'ms', note);
  record('latency.max', report.max / 1000, 'ms', note);
}

async function main() {
  if (args.role === 'worker') {
    await runWorker();
    return;
  }
  const q = await open();
  try {
    if (mode === 'enqueue') await enqueue(q);
    else if (mode === 'lifecycle') await lifecycle(q);
    else if (mode === 'latency') await latency(q);
    else throw new Error(`--mode ${mode}?`);
  } finally {
    await q.close();
  }
}

main().catch((e) => {
  console.error(`peer ${system} ${mode}: ${e.stack ?? e}`);
  process.exit(1);
});
