-- Variant (d) of bench/run.sh: header-based routing for the same five stacks, written
-- the way a team would do it in Envoy's Lua filter. It reads the geo, cohort, user-agent
-- and user headers, picks a stack and sets x-switchyard-stack for the route table.
-- No signed affinity cookie, no health or breaker view: the cheap end of "routing in
-- the proxy", to compare Switchyard's cost against.

local EU = { DE = true, FR = true, NL = true, IE = true, ES = true, IT = true, PL = true, SE = true }
local APAC = { JP = true, AU = true, SG = true, IN = true, KR = true }

-- A stable 0..99 bucket of the user id (percentage slices).
local function bucket(s)
  local h = 0
  for i = 1, #s do
    h = (h * 31 + s:byte(i)) % 1000003
  end
  return h % 100
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local stack = nil

  local country = headers:get("x-geo-country")
  if country ~= nil then
    country = string.upper(country)
    if EU[country] then
      stack = "eu"
    elseif APAC[country] then
      stack = "apac"
    end
  end

  if stack == nil then
    local cohort = headers:get("x-jwt-cohort")
    if cohort == "beta" or cohort == "staff" then
      stack = "canary"
    elseif cohort == "premium" or cohort == "gold" then
      stack = "blue"
    end
  end

  if stack == nil then
    local ua = string.lower(headers:get("user-agent") or "")
    local b = bucket(headers:get("x-jwt-sub") or "")
    if string.find(ua, "shopapp-", 1, true) then
      if b < 2 then stack = "canary" elseif b % 2 == 0 then stack = "blue" else stack = "green" end
    elseif string.find(ua, "bot", 1, true) then
      stack = "green"
    elseif b < 5 then
      stack = "canary"
    elseif b < 25 then
      stack = "green"
    elseif b % 2 == 0 then
      stack = "blue"
    else
      stack = "green"
    end
  end

  headers:replace("x-switchyard-stack", stack)
end
