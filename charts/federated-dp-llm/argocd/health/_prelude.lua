-- Shared start of every fdp.io health check (generate.py puts it in front of each
-- health/<Kind>.lua; Argo CD runs each kind's script on its own, with `obj` set).
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
-- Progressing while the status does not describe this spec yet: right after a sync it
-- still describes the previous one, and must not read as Healthy.
local function not_observed(first)
  if obj.status == nil or obj.status.observedGeneration == nil then
    return { status = "Progressing", message = first }
  end
  if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
    return {
      status = "Progressing",
      message = "Waiting for the fdp operator to observe generation " .. tostring(obj.metadata.generation),
    }
  end
  return nil
end
