// Throwaway OIDC provider for Gatehouse identity tests.
//
// Usage:
//   node provider.mjs gen-jwks <out.json>
//       writes a private JWKS with one fresh RS256 key (random kid) and prints the kid.
//   node provider.mjs serve <jwks.json> [port] [group-count]
//       starts `oidc-provider` on 127.0.0.1:<port> (0 = any free port; pass the old port to restart
//       on the same address), issuer http://127.0.0.1:<port>, one client `agent` / `agent-secret`
//       allowed the client_credentials grant; resource indicators turn every access token into an
//       RS256 JWT (typ at+jwt) for the requested resource. Each token carries `groups`
//       (group-count entries, default 2) so tests can make them as long as they need.
//       Prints one line `LISTENING <port>` once it accepts connections.
//
// Everything stays on loopback; nothing reads stdin.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [mode, file, portArg, groupArg] = process.argv.slice(2);

if (mode === 'gen-jwks') {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = randomUUID();
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  writeFileSync(file, JSON.stringify({ keys: [jwk] }), { mode: 0o600 });
  process.stdout.write(`${jwk.kid}\n`);
  process.exit(0);
} else if (mode !== 'serve') {
  process.stderr.write('usage: provider.mjs gen-jwks <out> | serve <jwks> [port] [groups]\n');
  process.exit(2);
}

const jwks = JSON.parse(readFileSync(file, 'utf8'));
const groupCount = Number.parseInt(groupArg ?? '2', 10);
const groups = Array.from({ length: groupCount }, (_, i) => `team-${i}`);

const server = createServer();
server.listen(Number.parseInt(portArg ?? '0', 10), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    jwks,
    clients: [
      {
        client_id: 'agent',
        client_secret: 'agent-secret',
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    scopes: ['read'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'https://gatehouse.test',
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resourceIndicator) => ({
          scope: 'read',
          audience: resourceIndicator,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: () => ({ groups }),
  });
  server.on('request', provider.callback());
  process.stdout.write(`LISTENING ${port}\n`);
});
server.on('error', (err) => {
  process.stderr.write(`listen failed: ${err.message}\n`);
  process.exit(1);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
