// The Better Auth side of examples/trading_api, as a trading app's Node server
// would configure it, with a tiny command line instead of a web server:
//
//   node auth.mjs migrate                   Better Auth's tables ("session", ...)
//   node auth.mjs sign-up EMAIL PASSWORD    prints the Cookie and Bearer headers
//   node auth.mjs sign-in EMAIL PASSWORD
//
// Settings: BETTER_AUTH_DATABASE_URL (a role that may create and write Better
// Auth's tables, e.g. the table owner) and BETTER_AUTH_SECRET, the same
// secret the Python app reads.
import pg from "pg";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { bearer } from "better-auth/plugins";

const url = process.env.BETTER_AUTH_DATABASE_URL;
if (!url) {
  console.error("set BETTER_AUTH_DATABASE_URL (the table owner's URL)");
  process.exit(2);
}
const pool = new pg.Pool({ connectionString: url });
const options = {
  database: pool,
  baseURL: "http://localhost:3000",
  emailAndPassword: { enabled: true },
  plugins: [bearer()],
};
export const auth = betterAuth(options);

function show({ headers, response }) {
  const cookie = headers
    .getSetCookie()
    .map((line) => line.split(";")[0])
    .join("; ");
  console.log(`user id: ${response.user.id}`);
  console.log(`Cookie: ${cookie}`);
  console.log(`Authorization: Bearer ${headers.get("set-auth-token")}`);
}

const [command, email, password] = process.argv.slice(2);
try {
  if (command === "migrate") {
    const { toBeCreated, runMigrations } = await getMigrations(options);
    await runMigrations();
    console.log(`created: ${toBeCreated.map((t) => t.table).join(", ") || "nothing"}`);
  } else if (command === "sign-up" && email && password) {
    show(await auth.api.signUpEmail({ body: { email, password, name: email }, returnHeaders: true }));
  } else if (command === "sign-in" && email && password) {
    show(await auth.api.signInEmail({ body: { email, password }, returnHeaders: true }));
  } else {
    console.error("usage: node auth.mjs migrate | sign-up EMAIL PASSWORD | sign-in EMAIL PASSWORD");
    process.exitCode = 2;
  }
} finally {
  await pool.end();
}
