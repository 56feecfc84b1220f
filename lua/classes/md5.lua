-- md5: the MD5 of an object, computed next to the data, so no byte of it crosses to the
-- client.
--
--   digest(input, output)  appends the hex digest to output and records it in the omap as
--                          "md5" (getfattr -n user.md5 FILE shows it).
--
--   lunafs call photos/cat.jpg md5.digest
--   setfattr -n user.cls.md5.digest FILE && getfattr --only-values -n user.md5 FILE

local hashing = digest      -- lunafs's hash functions (the handler below takes the name)
local PIECE = 4 * 1024 * 1024

function digest(input, output)
  local size = objclass.stat()
  local h = hashing.new("md5")
  local offset = 0
  while offset < size do
    local n = math.min(PIECE, size - offset)
    h:update(objclass.read(offset, n))
    offset = offset + n
  end
  local hex = h:hex()
  objclass.map_set_val("md5", hex)
  output:append(hex)
  return 0
end

objclass.register(digest)
