-- Argo CD health check for fdp.io/FederatedRouter (federated-dp-llm).
-- Order matters: a status the operator has not caught up with says nothing about the spec
-- Argo CD just synced, so observedGeneration is compared with metadata.generation first.
local waiting = not_observed("Waiting for the fdp operator to observe the FederatedRouter")
if waiting ~= nil then
  return waiting
end
local rollout = obj.status.rollout or {}
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  -- Rollout aborted / rolled back (stable still serves) or a spec/policy error: a person must act.
  hs.status = "Degraded"
  hs.message = msg(stalled, "Stalled: " .. tostring(stalled.reason))
  return hs
end
local paused = condition("Paused")
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = msg(paused, "Rollout paused")
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = msg(reconciling, rollout.message or "Rolling out")
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = msg(ready, "Ready")
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = msg(ready, "Not ready: " .. tostring(ready.reason))
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
