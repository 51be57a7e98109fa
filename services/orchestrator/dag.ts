/**
 * The workflow graph: validation (unique ids, known dependencies, no duplicates, no cycles) and
 * Kahn's topological order. Pure functions on task ids; no transport, no database.
 */
export interface DagNode {
  id: string;
  dependsOn: readonly string[];
}

export interface DagViolation {
  /** Proto-style field path, e.g. `tasks[fetch].depends_on[0]`, or `tasks` for a cycle. */
  field: string;
  description: string;
}

export interface Dag {
  /** Task ids in Kahn order (roots first; ties by declaration order, so the order is stable). */
  order: string[];
  /** id -> ids that depend on it. */
  dependents: Map<string, string[]>;
  /** id -> every task it depends on, directly or not (what CEL's `tasks` map may hold). */
  ancestors: Map<string, Set<string>>;
  /** Tasks no other task depends on (their outputs make the run's output). */
  sinks: string[];
}

/** Validates the graph; returns the violations (empty when the graph is a DAG). */
export function validateDag(nodes: readonly DagNode[]): DagViolation[] {
  const violations: DagViolation[] = [];
  const ids = new Set<string>();
  for (const [i, node] of nodes.entries()) {
    if (ids.has(node.id)) violations.push({ field: `tasks[${i}].id`, description: `duplicate task id "${node.id}"` });
    ids.add(node.id);
  }
  for (const node of nodes) {
    const seen = new Set<string>();
    node.dependsOn.forEach((dep, j) => {
      const field = `tasks[${node.id}].depends_on[${j}]`;
      if (dep === node.id) violations.push({ field, description: `task depends on itself (cycle: ${node.id} -> ${node.id})` });
      else if (!ids.has(dep)) violations.push({ field, description: `unknown task "${dep}"` });
      else if (seen.has(dep)) violations.push({ field, description: `duplicate dependency "${dep}"` });
      seen.add(dep);
    });
  }
  if (violations.length > 0) return violations;
  const cycle = findCycle(nodes);
  if (cycle) violations.push({ field: "tasks", description: `cycle: ${cycle.join(" -> ")}` });
  return violations;
}

/**
 * One cycle, as a path that ends where it starts (a -> b -> c -> a), or undefined. Iterative DFS
 * with colours, so 1,000-task chains do not blow the stack. Edges go from a task to the tasks
 * it depends on; the reported path is reversed to read in execution order.
 */
export function findCycle(nodes: readonly DagNode[]): string[] | undefined {
  const deps = new Map(nodes.map((n) => [n.id, n.dependsOn]));
  const colour = new Map<string, 0 | 1 | 2>();
  for (const start of nodes) {
    if (colour.get(start.id)) continue;
    const stack: { id: string; next: number }[] = [{ id: start.id, next: 0 }];
    colour.set(start.id, 1);
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const list = deps.get(top.id) ?? [];
      if (top.next >= list.length) {
        colour.set(top.id, 2);
        stack.pop();
        continue;
      }
      const dep = list[top.next++];
      const c = colour.get(dep) ?? 0;
      if (c === 1) {
        const from = stack.findIndex((f) => f.id === dep);
        const path = stack.slice(from).map((f) => f.id);
        // path: dep -> ... -> top, each depending on the next; execution order is the reverse.
        const cycle = [...path].reverse();
        // Start at the task declared first, so the report is stable whatever the search order.
        const pos = new Map(nodes.map((n, i) => [n.id, i]));
        let k = 0;
        cycle.forEach((id, i) => (pos.get(id)! < pos.get(cycle[k])! ? (k = i) : undefined));
        const rotated = [...cycle.slice(k), ...cycle.slice(0, k)];
        return [...rotated, rotated[0]];
      }
      if (c === 0 && deps.has(dep)) {
        colour.set(dep, 1);
        stack.push({ id: dep, next: 0 });
      }
    }
  }
  return undefined;
}

/** Kahn order, dependents and ancestors of a graph that validateDag accepted. */
export function buildDag(nodes: readonly DagNode[]): Dag {
  const indegree = new Map<string, number>();
  const dependents = new Map<string, string[]>();
  const position = new Map<string, number>();
  nodes.forEach((n, i) => {
    indegree.set(n.id, n.dependsOn.length);
    dependents.set(n.id, []);
    position.set(n.id, i);
  });
  for (const n of nodes) for (const d of n.dependsOn) dependents.get(d)!.push(n.id);
  // A queue in declaration order: roots first, then each task as soon as its last dependency is
  // placed. Ties keep declaration order so the order shown in GetRun is stable.
  const ready = nodes.filter((n) => n.dependsOn.length === 0).map((n) => n.id);
  const order: string[] = [];
  for (let i = 0; i < ready.length; i++) {
    const id = ready[i];
    order.push(id);
    const next: string[] = [];
    for (const dep of dependents.get(id)!) {
      const left = indegree.get(dep)! - 1;
      indegree.set(dep, left);
      if (left === 0) next.push(dep);
    }
    next.sort((a, b) => position.get(a)! - position.get(b)!);
    ready.push(...next);
  }
  if (order.length !== nodes.length) throw new Error("buildDag called on a graph with a cycle");
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const ancestors = new Map<string, Set<string>>();
  for (const id of order) {
    const set = new Set<string>();
    for (const d of byId.get(id)!.dependsOn) {
      set.add(d);
      for (const a of ancestors.get(d)!) set.add(a);
    }
    ancestors.set(id, set);
  }
  const sinks = nodes.filter((n) => dependents.get(n.id)!.length === 0).map((n) => n.id);
  return { order, dependents, ancestors, sinks };
}
