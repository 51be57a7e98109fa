import { SignJWT, exportJWK, exportSPKI, generateKeyPair } from "jose";

/** An RSA signing key with a JWKS, and a helper to mint end-user tokens for tests. */
export async function makeIssuer(options: { issuer?: string; audience?: string; kid?: string } = {}) {
  const issuer = options.issuer ?? "https://auth.test/";
  const audience = options.audience ?? "orca";
  const kid = options.kid ?? "test-key-1";
  const { publicKey, privateKey } = await generateKeyPair("RS256", { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: "RS256", use: "sig" };
  const publicPem = await exportSPKI(publicKey);
  const sign = (claims: Record<string, unknown>, opts: { issuer?: string; audience?: string; expiresIn?: string | number; kid?: string } = {}) =>
    new SignJWT(claims)
      .setProtectedHeader({ alg: "RS256", kid: opts.kid ?? kid })
      .setIssuer(opts.issuer ?? issuer)
      .setAudience(opts.audience ?? audience)
      .setSubject(String(claims.sub ?? "alice"))
      .setIssuedAt()
      .setExpirationTime(opts.expiresIn ?? "5m")
      .sign(privateKey);
  return { issuer, audience, jwks: { keys: [jwk] }, publicPem, sign };
}
