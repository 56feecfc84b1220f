-- counter: an omap counter that handlers increment atomically (handlers on one object run
-- one at a time, and each call commits or discards as a whole).
--
--   incr(input)  adds input (default 1) to omap "count"; the output is the new value.
--   get()        the current value (0 if never incremented).

local function current()
  local ok, v = pcall(cls.map_get_val, "count")
  if ok then return tonumber(v:str()) end
  return 0
end

function incr(input, output)
  local by = tonumber(input:str()) or 1
  local n = current() + by
  cls.map_set_val("count", tostring(n))
  output:append(tostring(n))
end

function get(input, output)
  output:append(tostring(current()))
end

cls.register(incr)
cls.register(get)
