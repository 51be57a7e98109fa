/** Moved to bench/lib/h2load.ts (shared by every bench); kept so existing imports keep working. */
export * from "../lib/h2load.js";
