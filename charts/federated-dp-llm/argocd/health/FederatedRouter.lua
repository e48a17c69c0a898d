-- Argo CD health check for fdp.io/FederatedRouter (federated-dp-llm).
-- Order matters: a status the operator has not caught up with says nothing about the spec
-- Argo CD just synced, so observedGeneration is compared with metadata.generation first.
local hs = {}
local function condition(ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end
local function msg(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the fdp operator to observe the FederatedRouter"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the fdp operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
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
