# Orca default routing policy in Rego: the same rules as ../../default.cedar (see there), for
# OPA WebAssembly. Build the bundle with (see ../../README.md):
#   opa build -t wasm -e orca/decision -o default.tar.gz services/policy/defaults/rego
# The entrypoint orca/decision returns the object the Policy service maps to a decision:
#   {"decision": "allow"|"deny"|"divert"|"tarpit", "reasons": [...], "divert_target", "tarpit_delay_ms"}
package orca

import rego.v1

# A field of the request: top level first, then input.context (as the Cedar engine merges them).
attr(name) := input[name]

attr(name) := input.context[name] if not has_top(name)

has_top(name) if _ = input[name]

trusted_read if {
	attr("tenant") == "trusted"
	attr("action") == "read"
}

default decision := {"decision": "deny", "reasons": ["no matching permit"]}

decision := {"decision": "deny", "reasons": ["ip reputation below 20"]} if {
	attr("ip_reputation") < 20
} else := {"decision": "tarpit", "tarpit_delay_ms": 2000, "reasons": ["ip reputation below 50: slowed down", "trusted tenant may read"]} if {
	trusted_read
	attr("ip_reputation") < 50
} else := {"decision": "divert", "divert_target": "canary", "reasons": ["canary traffic goes to the canary backend", "trusted tenant may read"]} if {
	trusted_read
	attr("canary") == true
} else := {"decision": "allow", "reasons": ["trusted tenant may read"]} if {
	trusted_read
} else := {"decision": "allow", "reasons": ["workflow runs may start"]} if {
	attr("action") == "start"
}
