import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * A throwaway CA, a server certificate for 127.0.0.1 and client certificates with the given
 * SPIFFE URI SANs, made with the openssl CLI for TLS tests.
 */
export function makeCertificates(clientSans: string[]): {
  dir: string;
  caFile: string;
  serverCert: string;
  serverKey: string;
  clients: { san: string; cert: string; key: string }[];
} {
  const dir = mkdtempSync(join(tmpdir(), "orca-certs-"));
  const path = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=orca-test-ca",
    "-keyout", path("ca.key"), "-out", path("ca.crt"));
  const issue = (name: string, subject: string, san: string, usage: string) => {
    writeFileSync(path(`${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=${usage}\n`);
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject,
      "-keyout", path(`${name}.key`), "-out", path(`${name}.csr`));
    openssl("x509", "-req", "-in", path(`${name}.csr`), "-CA", path("ca.crt"), "-CAkey", path("ca.key"), "-CAcreateserial",
      "-days", "1", "-extfile", path(`${name}.ext`), "-out", path(`${name}.crt`));
  };
  issue("server", "/CN=localhost", "IP:127.0.0.1,DNS:localhost", "serverAuth");
  const clients = clientSans.map((san, i) => {
    issue(`client${i}`, `/CN=client${i}`, san, "clientAuth");
    return { san, cert: path(`client${i}.crt`), key: path(`client${i}.key`) };
  });
  return { dir, caFile: path("ca.crt"), serverCert: path("server.crt"), serverKey: path("server.key"), clients };
}
