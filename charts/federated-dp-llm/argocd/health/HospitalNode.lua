-- Argo CD health check for fdp.io/HospitalNode (federated-dp-llm).
-- Ready reflects the operator's health probe of the hospital's LLM endpoint; after
-- failureThreshold failed probes the node is Ready=False (routers act on their own probes).
local waiting = not_observed("Waiting for the fdp operator to observe the HospitalNode")
if waiting ~= nil then
  return waiting
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or tostring(stalled.reason)
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Endpoint healthy"
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.message or "Waiting for the first health probe"
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  local failures = obj.status.consecutiveFailures
  local text = ready.message or tostring(ready.reason)
  if failures ~= nil then
    text = text .. " (" .. tostring(failures) .. " consecutive failed probes)"
  end
  hs.message = text
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the first health probe"
return hs
