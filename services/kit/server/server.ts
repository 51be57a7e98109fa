import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import type { Interceptor, ServiceImpl } from "@connectrpc/connect";
import { compressionBrotli, compressionGzip, connectNodeAdapter } from "@connectrpc/connect-node";
import { Health } from "../../../gen/health/v1/health_pb.js";
import type { TlsConfig } from "../config.js";
import { CallTelemetry } from "../call-telemetry.js";
import { callInterceptor, errorInterceptor, streamLimitInterceptor } from "../interceptors.js";
import { guardRequestMessage, requestGuardInterceptor } from "../request-guard.js";
import type { Logger } from "../telemetry/logger.js";
import { createServiceMetrics, type ServiceMetrics } from "../telemetry/metrics.js";
import { PEER_ADDRESS_HEADER, PEER_SAN_HEADER } from "../auth/interceptor.js";
import { createAdminServer } from "./admin.js";
import { createGrpcFastPath } from "./grpc-fast-path.js";
import { specGrpcMessages } from "./grpc-message.js";
import { HealthRegistry, ServingStatus, healthHandlers } from "./health.js";
import { REFLECTION_SERVICES, ReflectionIndex, reflectionHandlers } from "./reflection.js";

export interface ServiceRegistration {
  service: DescService;
  // Handlers are typed by the caller against their own descriptor.
  impl: Partial<ServiceImpl<DescService>>;
}

/** Pairs a service descriptor with its handlers, keeping the handlers typed at the call site. */
export function registration<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>): ServiceRegistration {
  return { service, impl: impl as unknown as ServiceRegistration["impl"] };
}

export interface OrcaServerOptions {
  /** Short name for logs and metrics, e.g. "lock". */
  name: string;
  host: string;
  port: number;
  adminPort: number;
  services: ServiceRegistration[];
  logger: Logger;
  metrics?: ServiceMetrics;
  tls?: TlsConfig;
  shutdownGraceMs: number;
  maxMessageBytes: number;
  /** Serve unary gRPC (protobuf) calls on the kit's fast path. */
  fastPath: boolean;
  /** Extra interceptors (auth, rate limits), run between observe and error mapping. */
  interceptors?: Interceptor[];
  /** Server streams end with Unavailable after this many seconds (clients resume); default 3600. */
  maxStreamSeconds?: number;
  /** Returns a problem description when a dependency is not ready, undefined when all is well. */
  readiness?: () => Promise<string | undefined>;
}

export interface Endpoints {
  port: number;
  adminPort: number;
  url: string;
}

const PREFACE = "PRI * HTTP/2.0";

/**
 * One port that speaks gRPC, gRPC-Web and Connect (h2c by default, as Istio sidecars expect;
 * HTTP/1.1 on the same port for Connect and gRPC-Web from browsers and curl; TLS 1.3 when
 * certificates are configured), plus the admin port. Health and reflection are always served.
 */
export class OrcaServer {
  readonly health = new HealthRegistry();
  readonly metrics: ServiceMetrics;
  private readonly shutdownController = (() => {
    // Every in-flight call that reads its signal listens to this one; that is not a leak.
    const controller = new AbortController();
    setMaxListeners(0, controller.signal);
    return controller;
  })();
  private readonly listener: net.Server;
  private readonly h2: http2.Http2Server | http2.Http2SecureServer;
  private readonly adminServer: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly sessions = new Set<http2.Http2Session>();
  private readonly streamingPaths = new Set<string>();
  private inFlight = 0;
  private draining = false;
  private drained?: () => void;
  private endpoints?: Endpoints;

  constructor(private readonly options: OrcaServerOptions) {
    this.metrics = options.metrics ?? createServiceMetrics(options.name);
    const serviceNames = options.services.map((s) => s.service.typeName);
    const reflection = reflectionHandlers(new ReflectionIndex([...options.services.map((s) => s.service), Health, ...REFLECTION_SERVICES]));
    const all: ServiceRegistration[] = [
      ...options.services,
      registration(Health, healthHandlers(this.health)),
      registration(REFLECTION_SERVICES[0], reflection.v1),
      registration(REFLECTION_SERVICES[1], reflection.v1alpha),
    ];
    for (const { service } of all) {
      for (const method of service.methods) {
        if (method.methodKind !== "unary") this.streamingPaths.add(`/${service.typeName}/${method.name}`);
      }
    }
    for (const name of serviceNames) this.health.set(name, ServingStatus.NOT_SERVING);

    const telemetry = new CallTelemetry({ serviceName: options.name, logger: options.logger, metrics: this.metrics });
    const interceptors = [
      callInterceptor(telemetry),
      ...(options.interceptors ?? []),
      streamLimitInterceptor((options.maxStreamSeconds ?? 3600) * 1000),
      requestGuardInterceptor(),
      errorInterceptor(options.logger),
    ];
    const acceptCompression = [compressionGzip, compressionBrotli];
    const shutdownSignal = this.shutdownController.signal;
    const connectHandler = connectNodeAdapter({
      routes: (router) => {
        for (const { service, impl } of all) router.service(service, impl);
      },
      interceptors,
      shutdownSignal,
      acceptCompression,
      readMaxBytes: options.maxMessageBytes,
      writeMaxBytes: options.maxMessageBytes,
    });
    const fastPath = options.fastPath
      ? createGrpcFastPath({
          services: all,
          // The same steps as `interceptors` without their frames: the stream limit concerns no
          // unary call, and error mapping is the telemetry's last step.
          telemetry,
          interceptors: options.interceptors ?? [],
          checkRequest: guardRequestMessage,
          onStreamClosed: this.onCallClosed,
          acceptCompression,
          readMaxBytes: options.maxMessageBytes,
          writeMaxBytes: options.maxMessageBytes,
          compressMinBytes: 1024,
          shutdownSignal,
          scheme: options.tls ? "https" : "http",
          neverIndexHeaders: ["x-request-id"],
        })
      : undefined;

    const onStream = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
      if (this.draining) return refuseStream(stream);
      setPeerHeaders(headers, stream.session);
      // Unary calls are counted in flight until their stream closes (for the drain on shutdown).
      const counted = !this.streamingPaths.has(headers[":path"] ?? "");
      if (counted) this.inFlight++;
      if (fastPath?.(stream, headers)) return; // it reports the close itself (onStreamClosed)
      if (counted) stream.on("close", this.onCallClosed); // 'close' comes once; a shared listener, not a closure per call
      // Everything else goes through Node's compatibility layer to connect-node, as
      // http2.createServer(handler) would do; gRPC (not gRPC-Web) gets the spec's grpc-message.
      if (isGrpcContentType(headers["content-type"])) specGrpcMessages(stream);
      const request = new http2.Http2ServerRequest(stream, headers, {}, rawHeaders);
      const response = new http2.Http2ServerResponse(stream);
      void connectHandler(request, response);
    };
    const onHttp1Request = (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (this.draining) {
        res.writeHead(503, { connection: "close" }).end("shutting down\n");
        return;
      }
      this.inFlight++;
      res.once("close", () => this.callEnded());
      setPeerHeaders(req.headers, req.socket);
      void connectHandler(req, res);
    };

    if (options.tls) {
      const tls = options.tls;
      const secure = http2.createSecureServer({
        cert: readFileSync(tls.certFile),
        key: readFileSync(tls.keyFile),
        ca: tls.clientCaFile ? readFileSync(tls.clientCaFile) : undefined,
        requestCert: tls.clientCaFile !== undefined,
        rejectUnauthorized: tls.clientCaFile !== undefined,
        minVersion: "TLSv1.3",
        allowHTTP1: true,
      });
      // HTTP/1.1 over TLS arrives as 'request'; registering it also installs Node's compat
      // 'stream' listener, which we replace with ours.
      secure.on("request", onHttp1Request);
      secure.removeAllListeners("stream");
      secure.on("secureConnection", (socket: TLSSocket) => {
        if (!sanAllowed(socket, tls.allowedSans)) {
          options.logger.warn({ event: "tls_client_rejected", reason: "SAN not in ORCA_TLS_ALLOWED_SANS" }, "security");
          socket.destroy();
        }
      });
      this.h2 = secure;
      this.listener = secure;
    } else {
      const h2c = http2.createServer();
      const h1 = http.createServer(onHttp1Request);
      // h2c with prior knowledge and HTTP/1.1 share the port: sniff the connection preface.
      // noDelay: RPC responses are small writes that must leave at once, not wait for Nagle.
      this.listener = net.createServer({ noDelay: true }, (socket) => {
        socket.once("data", (chunk: Buffer) => {
          socket.pause();
          socket.unshift(chunk);
          // http2 takes over the socket's handle and drains the buffered preface itself;
          // resuming here would hand those bytes to nobody. HTTP/1.1 reads in flowing mode.
          if (chunk.toString("latin1", 0, PREFACE.length) === PREFACE) {
            h2c.emit("connection", socket);
          } else {
            h1.emit("connection", socket);
            socket.resume();
          }
        });
      });
      this.h2 = h2c;
    }
    this.h2.on("stream", onStream);
    this.h2.on("session", (session: http2.Http2Session) => {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
    });
    this.listener.on("connection", (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
    this.adminServer = createAdminServer({
      registry: this.metrics.registry,
      ready: async () => {
        if (this.draining) return "shutting down";
        if (this.health.get("") !== ServingStatus.SERVING) return "not serving";
        return options.readiness?.();
      },
    });
  }

  private readonly onCallClosed = (): void => this.callEnded();

  private callEnded(): void {
    this.inFlight--;
    if (this.draining && this.inFlight === 0) this.drained?.();
  }

  get url(): string {
    if (!this.endpoints) throw new Error("server not started");
    return this.endpoints.url;
  }

  async start(): Promise<Endpoints> {
    const listen = (server: net.Server, port: number) =>
      new Promise<number>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, this.options.host, () => {
          server.off("error", reject);
          resolve((server.address() as AddressInfo).port);
        });
      });
    const port = await listen(this.listener, this.options.port);
    const adminPort = await listen(this.adminServer, this.options.adminPort);
    const host = this.options.host === "0.0.0.0" || this.options.host === "::" ? "127.0.0.1" : this.options.host;
    this.endpoints = { port, adminPort, url: `${this.options.tls ? "https" : "http"}://${host}:${port}` };
    this.health.set("", ServingStatus.SERVING);
    for (const { service } of this.options.services) this.health.set(service.typeName, ServingStatus.SERVING);
    return this.endpoints;
  }

  /**
   * Graceful shutdown: health goes NOT_SERVING, new connections and calls are refused, in-flight
   * calls get until the grace deadline to finish, then streams are cancelled and sockets closed.
   */
  async shutdown(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.health.shutdown();
    this.listener.close();
    for (const session of this.sessions) session.close(); // GOAWAY: no new streams on it
    if (this.inFlight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.options.shutdownGraceMs);
        this.drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.shutdownController.abort();
    // Give cancelled streams a moment to send their trailers, then cut what is left.
    await new Promise((resolve) => setTimeout(resolve, 50));
    for (const session of this.sessions) session.destroy();
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.adminServer.close(() => resolve()));
  }
}

/**
 * What the server knows about the connection, as headers for the auth interceptor: the peer
 * address and, over TLS with a verified client certificate, its URI SAN. Values a client sent
 * under these names are removed first, so they cannot be forged.
 */
function setPeerHeaders(headers: http.IncomingHttpHeaders, connection: http2.Http2Session | net.Socket | undefined | null): void {
  delete headers[PEER_ADDRESS_HEADER];
  delete headers[PEER_SAN_HEADER];
  if (!connection) return;
  const peer = peerOf(connection);
  if (peer.address) headers[PEER_ADDRESS_HEADER] = peer.address;
  if (peer.san) headers[PEER_SAN_HEADER] = peer.san;
}

/**
 * The peer of a connection (an HTTP/2 session or an HTTP/1.1 socket), worked out once per
 * connection rather than per call: getPeerCertificate() builds a large object every time, and an
 * HTTP/2 session's socket is a Proxy. Neither value can change on a TLS 1.3 connection.
 */
const peers = new WeakMap<object, { address?: string; san?: string }>();

function peerOf(connection: http2.Http2Session | net.Socket): { address?: string; san?: string } {
  let peer = peers.get(connection);
  if (peer) return peer;
  const socket = connection instanceof net.Socket ? connection : (connection.socket as net.Socket | TLSSocket | undefined);
  peer = {};
  if (socket) {
    peer.address = socket.remoteAddress;
    const tlsSocket = socket as TLSSocket;
    if (typeof tlsSocket.getPeerCertificate === "function" && tlsSocket.authorized) {
      // getPeerCertificate() is null once a rejected socket was destroyed.
      const uri = (tlsSocket.getPeerCertificate()?.subjectaltname ?? "")
        .split(",")
        .map((entry) => entry.trim())
        .find((entry) => entry.startsWith("URI:"));
      if (uri) peer.san = uri.slice(4);
    }
  }
  // Before the handshake completes nothing is known yet: only remember a finished answer.
  if (peer.address !== undefined) peers.set(connection, peer);
  return peer;
}

function refuseStream(stream: http2.ServerHttp2Stream): void {
  if (stream.destroyed) return;
  stream.respond(
    { ":status": 200, "content-type": "application/grpc", "grpc-status": "14", "grpc-message": "server is shutting down" },
    { endStream: true },
  );
}

function sanAllowed(socket: TLSSocket, allowed: string[]): boolean {
  if (allowed.length === 0) return true;
  const san = socket.getPeerCertificate()?.subjectaltname ?? "";
  const names = san.split(",").map((entry) => entry.trim().replace(/^(DNS|URI|IP Address):/, ""));
  return names.some((name) => allowed.includes(name));
}

/** application/grpc and application/grpc+proto|json, but not gRPC-Web (whose trailers are in the body). */
function isGrpcContentType(contentType: string | undefined): boolean {
  return contentType !== undefined && contentType.startsWith("application/grpc") && !contentType.startsWith("application/grpc-web");
}
