-- Enrich and route: events for keys under "images/" go to SUBJECT.images, under "logs/"
-- to SUBJECT.logs, the rest to SUBJECT.other; temporary files (rsync's ".name.XXXXXX",
-- editors' "~" backups) are not published at all. A compact message carries what
-- consumers usually need, plus a running count per bucket kept in the global table.
--   lunafs notification script BUCKET lua/notify/route_by_prefix.lua
local key = event.s3.object.key
local base = key:match("([^/]*)$")
if base:sub(1, 1) == "." or base:sub(-1) == "~" then
  return
end
local area = key:match("^(images)/") or key:match("^(logs)/") or "other"
local count = RGW.increment("events." .. event.s3.bucket.name)
local msg = string.format(
  '{"event":"%s","bucket":"%s","key":"%s","size":%d,"etag":"%s","seq":%d}',
  event.eventName, event.s3.bucket.name, key:gsub('[%c"\\]', "_"),
  event.s3.object.size, event.s3.object.eTag, count)
nats.publish(topic.subject .. "." .. area, msg, {["Lunafs-Event-Id"] = event.eventId})
