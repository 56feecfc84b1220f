-- thumb: the image thumbnail service (SPEC section 3), as in Ceph's cls_lua example: the
-- thumbnail is stored inside the image object, after the original's bytes, and the omap
-- records where.
--
--   make(input)   input "WxH" (default "200x150"): decodes the original (JPEG or PNG), fits
--                 a thumbnail inside WxH keeping the aspect ratio, encodes it in the
--                 original's format and writes it after the original. Every size made
--                 before is rebuilt with it. The omap gets "thumb.WxH" = "OFFSET LENGTH
--                 FORMAT" (getfattr -n user.thumb.200x150) and "thumb.original_size". The
--                 output is that location.
--   get(input)    the thumbnail's bytes for size "WxH" (ENOENT if none was made).
--   strip()       removes every thumbnail: the object is the original again.
--
-- JPEG and PNG decoders stop at the image's end marker, so the object still opens as the
-- original image everywhere; its size and checksum do include the thumbnails.

local DEFAULT = "200x150"

local function spec_of(input)
  local spec = input:str()
  if spec == "" then return DEFAULT end
  if not spec:match("^%d+[xX]%d+$") then
    error("thumbnail size must be WxH, got " .. spec)
  end
  return spec:lower()
end

-- The original's length: recorded by the first make, else the whole object.
local function original_size()
  local ok, v = pcall(objclass.map_get_val, "thumb.original_size")
  if ok then return tonumber(v:str()) end
  return (objclass.stat())
end

-- The sizes made so far, sorted.
local function made()
  local specs = {}
  for k in pairs(objclass.map_get_vals("", "thumb.", 1000)) do
    local s = k:match("^thumb%.(%d+x%d+)$")
    if s then specs[#specs + 1] = s end
  end
  table.sort(specs)
  return specs
end

function make(input, output)
  local spec = spec_of(input)
  local orig = original_size()
  local data = objclass.read(0, orig)
  local format = image.format(data)
  if not format then
    objclass.log(1, "not a JPEG or PNG image")
    return -objclass.EINVAL
  end
  local img = image.load(data)
  local specs = made()
  local seen = false
  for _, s in ipairs(specs) do seen = seen or s == spec end
  if not seen then specs[#specs + 1] = spec end
  objclass.truncate(orig)
  local offset = orig
  local location
  for _, s in ipairs(specs) do
    local t = img:thumbnail(s):encode(format)
    objclass.write(offset, #t, t)
    local loc = string.format("%d %d %s", offset, #t, format)
    objclass.map_set_val("thumb." .. s, loc)
    if s == spec then location = loc end
    offset = offset + #t
  end
  objclass.map_set_val("thumb.original_size", tostring(orig))
  objclass.log(5, "thumbnail " .. spec .. " at " .. location)
  output:append(location)
  return 0
end

function get(input, output)
  local loc = objclass.map_get_val("thumb." .. spec_of(input)):str()
  local offset, length = loc:match("^(%d+) (%d+)")
  output:append(objclass.read(tonumber(offset), tonumber(length)))
  return 0
end

function strip(input, output)
  local ok, v = pcall(objclass.map_get_val, "thumb.original_size")
  if not ok then return 0 end
  objclass.truncate(tonumber(v:str()))
  for _, s in ipairs(made()) do objclass.map_remove_key("thumb." .. s) end
  objclass.map_remove_key("thumb.original_size")
  return 0
end

objclass.register(make)
objclass.register(get)
objclass.register(strip)
