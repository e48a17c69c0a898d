-- Argo CD health check for fdp.io/PrivacyPolicy (federated-dp-llm).
-- Healthy once the operator validated the policy and stated its guarantee; an invalid
-- policy is Degraded (routers using it keep their last good config).
local waiting = not_observed("Waiting for the fdp operator to validate the PrivacyPolicy")
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
  local guarantee = obj.status.guarantee
  if type(guarantee) == "table" then
    guarantee = guarantee.text or guarantee.summary
  end
  hs.message = guarantee or ready.message or "Valid"
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.message or "Validating"
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message or tostring(ready.reason)
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
