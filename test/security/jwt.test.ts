import { createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { createJwtVerifier } from "../../services/kit/auth/jwt.js";
import { makeIssuer } from "../support/jwt.js";

const b64 = (value: object | string) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

describe("JWT verification (jose): the table of hostile tokens", async () => {
  const issuer = await makeIssuer();
  const verify = await createJwtVerifier({
    issuer: issuer.issuer,
    audience: issuer.audience,
    algorithms: ["RS256"],
    clockToleranceSeconds: 30,
    jwks: issuer.jwks,
  });
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: "alice", roles: ["operator"], tenant: "acme" };

  it("accepts a valid token and returns its roles and tenant", async () => {
    await expect(verify(await issuer.sign(claims))).resolves.toEqual({ kind: "user", subject: "alice", roles: ["operator"], tenant: "acme" });
  });

  it("accepts a token expired within the clock tolerance", async () => {
    await expect(verify(await issuer.sign(claims, { expiresIn: now - 10 }))).resolves.toMatchObject({ subject: "alice" });
  });

  const hostile: [string, () => Promise<string>, RegExp][] = [
    ["alg none", async () => `${b64({ alg: "none", typ: "JWT" })}.${b64({ ...claims, iss: issuer.issuer, aud: issuer.audience, exp: now + 60 })}.`, /invalid token/],
    [
      "HS256 signed with the RSA public key as the secret",
      async () => {
        const header = b64({ alg: "HS256", typ: "JWT", kid: "test-key-1" });
        const payload = b64({ ...claims, iss: issuer.issuer, aud: issuer.audience, exp: now + 60 });
        const signature = createHmac("sha256", issuer.publicPem).update(`${header}.${payload}`).digest("base64url");
        return `${header}.${payload}.${signature}`;
      },
      /invalid token/,
    ],
    ["wrong audience", () => issuer.sign(claims, { audience: "someone-else" }), /invalid token/],
    ["wrong issuer", () => issuer.sign(claims, { issuer: "https://evil.test/" }), /invalid token/],
    ["expired beyond the tolerance", () => issuer.sign(claims, { expiresIn: now - 120 }), /invalid token/],
    ["unknown kid", () => issuer.sign(claims, { kid: "rotated-away" }), /invalid token/],
    ["missing tenant", () => issuer.sign({ sub: "alice", roles: ["operator"] }), /missing tenant/],
    ["no known role", () => issuer.sign({ sub: "alice", roles: ["superuser"], tenant: "acme" }), /no known role/],
    ["all tenants without admin", () => issuer.sign({ sub: "alice", roles: ["operator"], tenant: "*" }), /only admins/],
    ["garbage", async () => "not.a.jwt", /invalid token/],
  ];
  it.each(hostile)("rejects: %s", async (_name, make, message) => {
    await expect(verify(await make())).rejects.toThrow(message);
  });

  it("signed by a different key with the same kid is rejected", async () => {
    const impostor = await makeIssuer();
    await expect(verify(await impostor.sign(claims))).rejects.toThrow(/invalid token/);
  });
});
