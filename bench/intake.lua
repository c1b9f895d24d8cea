-- wrk: one new order per request (a unique Idempotency-Key each), JSON body.
local n = 0
local thread_id = math.random(1, 1000000)
request = function()
  n = n + 1
  local key = string.format("bench-%d-%d", thread_id, n)
  return wrk.format("POST", "/checkout",
    { ["content-type"] = "application/json", ["idempotency-key"] = key },
    '{"cart":["tee-navy"],"qty":1}')
end
