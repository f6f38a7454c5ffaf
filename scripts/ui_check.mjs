// The browser half of scripts/ui-check (read that first). Plain Node 18+: fetch for Dagster's
// GraphQL API, playwright-core driving Debian's chromium for the screenshots.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
};
const url = option("--url", "http://127.0.0.1:3000").replace(/\/$/, "");
const docs = option("--docs", "docs");
const LOCATION = "xmatch_pipeline";
const REPOSITORY = "__repository__";
const JOB = "xmatch_microbatch";
// The demo's input topic (cli/demo.py's DEMO_INPUT_TOPIC): a devstack's Dagster storage may
// also hold ranges of other topics (an earlier walk-through), which the demo does not read.
const DEMO_TOPIC = "ztf_20200101_programid1";
const TIMEOUT_MS = 10_000;

function fail(message) {
  console.error(`ui-check: FAILED: ${message}`);
  process.exit(1);
}

async function graphql(query, variables = {}) {
  const response = await fetch(`${url}/graphql`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  if (!response.ok) fail(`GraphQL answered HTTP ${response.status}: is the demo up at ${url}?`);
  const body = await response.json();
  if (body.errors) fail(`GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function runs(filter) {
  const data = await graphql(
    `query($filter: RunsFilter) { runsOrError(filter: $filter, limit: 500) {
       __typename ... on Runs { results { runId status tags { key value } } } } }`,
    { filter },
  );
  return data.runsOrError.results.map((run) => ({
    ...run,
    tags: Object.fromEntries(run.tags.map((tag) => [tag.key, tag.value])),
  }));
}

async function waitFor(what, seconds, probe) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) fail(`${what}: not within ${seconds} s`);
    await sleep(2000);
  }
}

function rangeOfKey(key) {
  const [topic, partition, bounds] = key.split("/");
  const [start, end] = bounds.split("-").map(Number);
  return { topic, partition: Number(partition), start_offset: start, end_offset: end };
}

async function launchLiveRun(key) {
  // As from the launchpad: the range's config and tags, no backfill tag, so a live run.
  const range = rangeOfKey(key);
  const tags = [
    ["dagster/partition", key],
    ["xmatch/topic", range.topic],
    ["xmatch/partition", String(range.partition)],
    ["xmatch/start_offset", String(range.start_offset)],
    ["xmatch/end_offset", String(range.end_offset)],
    ["xmatch/partition_key", `${range.topic}:${range.partition}`],
  ].map(([key, value]) => ({ key, value }));
  const data = await graphql(
    `mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
       __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }`,
    {
      params: {
        selector: { repositoryLocationName: LOCATION, repositoryName: REPOSITORY, jobName: JOB },
        runConfigData: { ops: { check_offset_range: { config: range } } },
        executionMetadata: { tags },
      },
    },
  );
  const result = data.launchRun;
  if (result.__typename !== "LaunchRunSuccess") fail(`launchRun ${key}: ${JSON.stringify(result)}`);
  return result.run.runId;
}

async function launchBackfill(keys) {
  const data = await graphql(
    `mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
       __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }`,
    {
      params: {
        selector: {
          partitionSetName: `${JOB}_partition_set`,
          repositorySelector: { repositoryLocationName: LOCATION, repositoryName: REPOSITORY },
        },
        partitionNames: keys,
      },
    },
  );
  const result = data.launchPartitionBackfill;
  if (result.__typename !== "LaunchBackfillSuccess") fail(`backfill: ${JSON.stringify(result)}`);
  return result.backfillId;
}

async function screenshot(page, path, file, waitText) {
  await page.goto(`${url}${path}`, { waitUntil: "domcontentloaded" });
  if (waitText) await page.getByText(waitText).first().waitFor({ timeout: 60_000 });
  await page.waitForTimeout(3000);
  await dismissDialogs(page);
  await page.screenshot({ path: `${docs}/${file}` });
  console.log(`ui-check: screenshot ${docs}/${file}`);
}

async function dismissDialogs(page) {
  // A fresh instance asks for a newsletter sign-up: close it with a real click.
  for (const dialog of await page.getByRole("dialog").all()) {
    const button = dialog.getByRole("button", { name: /skip|no thanks|not now|dismiss|close|cancel/i });
    if (await button.count()) {
      await button.first().click();
      console.log("ui-check: dismissed a dialog");
      await page.waitForTimeout(500);
    }
  }
}

// 1. The demo's live runs: every range the sensor planned succeeded.
const live = await waitFor("the demo's first four live runs succeed", 600, async () => {
  const done = (await runs({ pipelineName: JOB, statuses: ["SUCCESS"] })).filter(
    (run) =>
      run.tags["dagster/partition"]?.startsWith(`${DEMO_TOPIC}/`) && !run.tags["dagster/backfill"],
  );
  return done.length >= 4 ? done : null;
});
const keys = [...new Set(live.map((run) => run.tags["dagster/partition"]))].sort();
console.log(`ui-check: ${keys.length} ranges succeeded live, e.g. ${keys.slice(0, 2).join(", ")}`);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
page.setDefaultTimeout(60_000);

// 2. Two processed ranges re-run live: the offset check refuses them, so both fail.
const failing = keys.slice(0, 2);
const failedIds = await Promise.all(failing.map(launchLiveRun));
await waitFor("the two live re-runs fail", 300, async () => {
  const statuses = (await runs({ runIds: failedIds })).map((run) => run.status);
  return statuses.length === 2 && statuses.every((status) => status === "FAILURE");
});
console.log(`ui-check: ranges ${failing.join(", ")} failed (runs ${failedIds.join(", ")})`);
await screenshot(page, `/locations/${LOCATION}/jobs/${JOB}/partitions`, "ui-partitions-failed.png", failing[0]);

// 3. A backfill over the two failed ranges, through the GraphQL API; its runs must succeed.
const backfillId = await launchBackfill(failing);
console.log(`ui-check: backfill ${backfillId} launched over ${failing.join(", ")}`);
const backfillRuns = await waitFor("the backfill's two runs succeed", 600, async () => {
  const found = await runs({ tags: [{ key: "dagster/backfill", value: backfillId }] });
  if (found.some((run) => ["FAILURE", "CANCELED"].includes(run.status)))
    fail(`a backfill run failed: ${JSON.stringify(found.map((run) => [run.runId, run.status]))}`);
  return found.length === 2 && found.every((run) => run.status === "SUCCESS") ? found : null;
});
const backfilled = backfillRuns.map((run) => run.tags["dagster/partition"]).sort();
if (JSON.stringify(backfilled) !== JSON.stringify(failing)) fail(`backfilled ${backfilled}`);
console.log(`ui-check: backfill runs ${backfillRuns.map((run) => run.runId).join(", ")} succeeded`);

await screenshot(page, `/locations/${LOCATION}/jobs/${JOB}/partitions`, "ui-partitions-backfilled.png", failing[0]);
await screenshot(page, `/runs/b/${backfillId}`, "ui-backfill.png", null);
await screenshot(page, `/assets/postgres/allwise_xmatch?view=partitions`, "ui-asset-partitions.png", null);
await screenshot(page, `/assets/postgres/allwise_xmatch?view=checks`, "ui-asset-checks.png", "offsets_accounted");
await browser.close();
console.log("ui-check: OK");
