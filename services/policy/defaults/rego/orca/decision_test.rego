# `opa test services/policy/defaults/rego` runs these; the full table is ../../default.tests.json.
package orca_test

import rego.v1

import data.orca

test_trusted_read if orca.decision.decision == "allow" with input as {"tenant": "trusted", "action": "read", "ip_reputation": 90}

test_low_reputation_denied if orca.decision.decision == "deny" with input as {"tenant": "trusted", "action": "read", "ip_reputation": 10}

test_tarpit if orca.decision.tarpit_delay_ms == 2000 with input as {"tenant": "trusted", "action": "read", "ip_reputation": 35}

test_divert if orca.decision.divert_target == "canary" with input as {"tenant": "trusted", "action": "read", "canary": true}

test_start if orca.decision.decision == "allow" with input as {"tenant": "acme", "action": "start"}

test_default_deny if orca.decision.decision == "deny" with input as {}
