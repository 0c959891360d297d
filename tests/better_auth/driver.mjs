// The real Better Auth, driven by the Python tests over stdin/stdout.
//
// One request per line in, one response per line out: {"op": ..., ...} in,
// "@@" + JSON out (anything else Better Auth prints is not a response).
// Every sign-up, sign-in, session check, sign-out and user deletion goes
// through Better Auth's own API (auth.api.*) against the test database, so
// the cookies and tokens the tests use are exactly the ones it issues.
//
// An instance is built per configuration: {databaseUrl, env, secure,
// cookieCache}. `env` holds the secret variables Better Auth reads
// (BETTER_AUTH_SECRET, BETTER_AUTH_SECRETS, AUTH_SECRET): the instance is
// built with exactly those set, as a deployment would set them.
import { createInterface } from "node:readline";
import pg from "pg";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { bearer } from "better-auth/plugins";

const SECRET_VARIABLES = ["BETTER_AUTH_SECRET", "BETTER_AUTH_SECRETS", "AUTH_SECRET"];
const pools = new Map();
const instances = new Map();

function pool(databaseUrl) {
  if (!pools.has(databaseUrl)) {
    const created = new pg.Pool({ connectionString: databaseUrl, max: 4 });
    // A test database dropped under an idle client must not end the driver.
    created.on("error", () => {});
    pools.set(databaseUrl, created);
  }
  return pools.get(databaseUrl);
}

function options(config) {
  return {
    database: pool(config.databaseUrl),
    baseURL: config.secure ? "https://trading.example.test" : "http://localhost:3000",
    emailAndPassword: { enabled: true },
    user: { deleteUser: { enabled: true } },
    session: config.cookieCache ? { cookieCache: { enabled: true, maxAge: 300 } } : {},
    plugins: [bearer()],
    logger: { level: "error" },
  };
}

async function instance(config) {
  const key = JSON.stringify(config);
  if (!instances.has(key)) {
    const saved = Object.fromEntries(SECRET_VARIABLES.map((name) => [name, process.env[name]]));
    for (const name of SECRET_VARIABLES) delete process.env[name];
    Object.assign(process.env, config.env ?? {});
    try {
      const auth = betterAuth(options(config));
      // The context (and its secret) is built lazily: build it while the
      // variables are set. Requests are handled one at a time.
      await auth.$context;
      instances.set(key, auth);
    } finally {
      for (const name of SECRET_VARIABLES) {
        if (saved[name] === undefined) delete process.env[name];
        else process.env[name] = saved[name];
      }
    }
  }
  return instances.get(key);
}

function requestHeaders(request) {
  const headers = new Headers();
  if (request.cookie) headers.set("cookie", request.cookie);
  if (request.authorization) headers.set("authorization", request.authorization);
  return headers;
}

// What a sign-in hands the browser: the cookie header it will send back,
// and the bearer token the bearer plugin exposes in set-auth-token.
function issued(headers, response) {
  const setCookies = headers.getSetCookie();
  const cookie = setCookies.map((line) => line.split(";")[0]).join("; ");
  return {
    userId: response.user.id,
    cookie,
    setCookie: setCookies,
    bearer: headers.get("set-auth-token"),
  };
}

const operations = {
  async migrate(request) {
    // Better Auth's own migration, as `npx @better-auth/cli migrate` runs it.
    const { toBeCreated, toBeAdded, runMigrations } = await getMigrations(options(request.config));
    await runMigrations();
    return { created: toBeCreated.map((t) => t.table), added: toBeAdded.map((t) => t.table) };
  },
  async signUp(request) {
    const auth = await instance(request.config);
    const { headers, response } = await auth.api.signUpEmail({
      body: { email: request.email, password: request.password, name: request.name ?? "Trader" },
      returnHeaders: true,
    });
    return issued(headers, response);
  },
  async signIn(request) {
    const auth = await instance(request.config);
    const { headers, response } = await auth.api.signInEmail({
      body: { email: request.email, password: request.password },
      returnHeaders: true,
    });
    return issued(headers, response);
  },
  async getSession(request) {
    const auth = await instance(request.config);
    const session = await auth.api.getSession({ headers: requestHeaders(request) });
    return { userId: session?.user?.id ?? null };
  },
  async signOut(request) {
    const auth = await instance(request.config);
    const result = await auth.api.signOut({ headers: requestHeaders(request) });
    return { success: result.success === true };
  },
  async deleteUser(request) {
    const auth = await instance(request.config);
    const result = await auth.api.deleteUser({
      headers: requestHeaders(request),
      body: { password: request.password },
    });
    return { success: result.success === true };
  },
};

function answer(response) {
  process.stdout.write("@@" + JSON.stringify(response) + "\n");
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
    const operation = operations[request.op];
    if (!operation) throw new Error(`unknown op ${request.op}`);
    answer({ ok: true, result: await operation(request) });
  } catch (error) {
    answer({ ok: false, error: String(error?.message ?? error), status: error?.status ?? null });
  }
}
for (const p of pools.values()) await p.end();
