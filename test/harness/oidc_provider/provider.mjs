// The OpenID provider of mas-formula's login tests: upstream's oidc-provider
// (npm, pinned in package-lock.json), configured from a JSON file, served
// over HTTPS on loopback. Started by test/harness/oidc_provider.py.
//
// Usage: node provider.mjs CONFIG.json
//   {issuer, host, port, cert, key,
//    clients: [{client_id, client_secret, token_endpoint_auth_method, redirect_uris}],
//    accounts: {"<login>": {preferred_username, name, email}}}
//
// The login and consent pages are oidc-provider's own development
// interactions (any password is accepted). The login name is the account's
// id, which oidc-provider makes the subject (`sub`); an account missing from
// `accounts` gets preferred_username = the login. Claims of the granted scopes go into the ID token, which is
// what MAS's claims_imports read.
import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts || {};

function account(login) {
  const known = accounts[login] || {};
  const claims = {
    sub: login,
    preferred_username: known.preferred_username || login,
    name: known.name || login,
    email: known.email || `${login}@idp.test`,
    email_verified: true,
  };
  return {
    accountId: login,
    async claims() {
      return claims;
    },
  };
}

const provider = new Provider(config.issuer, {
  clients: config.clients.map((client) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    ...client,
  })),
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
  },
  conformIdTokenClaims: false,
  cookies: { keys: ['mas-formula-test-provider-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return account(id);
  },
});

// every request and its answer, one JSON line on stdout (the harness's log)
provider.on('server_error', (ctx, err) => {
  console.log(JSON.stringify({ event: 'server_error', path: ctx.path, error: String(err) }));
});
provider.on('grant.error', (ctx, err) => {
  console.log(JSON.stringify({ event: 'grant.error', error: String(err), detail: err.error_description }));
});
provider.on('authorization.error', (ctx, err) => {
  console.log(JSON.stringify({ event: 'authorization.error', error: String(err), detail: err.error_description }));
});
provider.use(async (ctx, next) => {
  await next();
  console.log(JSON.stringify({ event: 'request', method: ctx.method, path: ctx.path, status: ctx.status }));
});

const server = https.createServer(
  { cert: fs.readFileSync(config.cert), key: fs.readFileSync(config.key) },
  provider.callback(),
);
server.listen(config.port, config.host, () => {
  console.log(JSON.stringify({ event: 'listening', issuer: config.issuer }));
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
