"""Lua scripts of the Redis store: each runs atomically on the server, so a multi-step change (take a lead
from the hopper *and* record its lease) is never seen half done and two nodes never take the same lead.

Every key a script touches is passed in KEYS and carries the campaign's hash tag, so on Redis Cluster all
of them live in one slot. Scores travel as the strings Redis returns (`%.17g`): Lua's own number-to-string
keeps only 14 digits, which would reorder large scores.

A lease owner record is `"<token> <hopper score> <node id>"` (the node id last: it may hold spaces).
"""

from __future__ import annotations

# KEYS: def, leads, hopper, seq, sched, sched_score
# ARGV: base score, eligible_at ('' = dialable now), then lead id, lead json, lead id, lead json, ...
ADD_LEADS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local base = tonumber(ARGV[1])
local at = ARGV[2]
local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
local added = 0
for i = 3, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    seq = seq + 1
    added = added + 1
    local score = string.format('%.17g', base + seq)
    if at == '' then
      redis.call('ZADD', KEYS[3], score, ARGV[i])
    else
      redis.call('ZADD', KEYS[5], at, ARGV[i])
      redis.call('HSET', KEYS[6], ARGV[i], score)
    end
  end
end
if added > 0 then redis.call('SET', KEYS[4], string.format('%.17g', seq)) end
return added
"""

# Shared by the scripts that put a lead back to wait in the store (DISPO_ASK, RELEASE, EXPIRE): the codes kept for
# it (`kept`: one JSON entry a line, `StoredCode.as_dict`, from `ask_disposition`) take effect. A final one ends the
# lead (done with its outcome; its kept state, callback and drops forgotten); a wrong party or DNC code drops its
# phone (`drops`: the phones' places in the lead's list, comma separated, merged into the state at the next lease);
# a lead with no usable phone left (those dropped in its kept state counted) ends. K: the keys by name (leads,
# states, kept, drops, done, cbs, cbs_at). Returns true if the lead ended: the caller keeps it out of line.
_SETTLE_KEPT = r"""
local function settle_kept(K, lid)
  local raw = redis.call('HGET', K.kept, lid)
  if not raw then return false end
  redis.call('HDEL', K.kept, lid)
  local ok, doc = pcall(cjson.decode, redis.call('HGET', K.leads, lid) or '')
  local phones = (ok and type(doc) == 'table' and type(doc.p) == 'table') and doc.p or {}
  local gone = {}
  local state = redis.call('HGET', K.states, lid)
  if state then
    local sok, st = pcall(cjson.decode, state)
    if sok and type(st) == 'table' and st.v == 1 and type(st.d) == 'table' then
      for _, i in ipairs(st.d) do gone[tonumber(i)] = true end
    end
  end
  local drops = {}
  local had = redis.call('HGET', K.drops, lid)
  if had then
    for i in string.gmatch(had, '%d+') do drops[tonumber(i)] = true end
  end
  local outcome, last = nil, nil
  for line in string.gmatch(raw, '[^\n]+') do
    local code = cjson.decode(line)
    last = code.o
    if code.f then
      outcome = code.o
      break
    end
    if code.d then
      for i, phone in ipairs(phones) do
        if phone == code.n then drops[i - 1] = true end
      end
    end
  end
  if not outcome then
    local left = 0
    for i = 1, #phones do
      if not drops[i - 1] and not gone[i - 1] then left = left + 1 end
    end
    if left == 0 then outcome = last end
  end
  if outcome then
    redis.call('HSET', K.done, lid, outcome)
    redis.call('HDEL', K.states, lid)
    redis.call('HDEL', K.cbs, lid)
    redis.call('ZREM', K.cbs_at, lid)
    redis.call('HDEL', K.drops, lid)
    return true
  end
  local list = {}
  for i in pairs(drops) do list[#list + 1] = i end
  if #list > 0 then
    table.sort(list)
    redis.call('HSET', K.drops, lid, table.concat(list, ','))
  end
  return false
end
"""

# KEYS: def, hopper, sched, sched_score, leases, owner, held(node), fence, leads, states, cbs, cbs_at, drops
# ARGV: count, now, lease expires at, node id, how many due scheduled leads to promote at most, mode ('' = the
# next leads in line; 'due' = leads waiting with an asked callback due by now, whatever their place in line)
# Returns false (unknown campaign), {} (nothing to lease) or {token, id, json, state, callback, drops, ...} (state:
# the hopper state a node handed the lead back with, '' if none; it stays until the lead is done or handed back;
# callback: '<at> <agent id>' asked while it waited (`CB_ASK`), '' if none; drops: phones dropped while it waited
# (`DISPO_ASK`), '' if none: both given to this leaser and forgotten).
LEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[5]))
if #due > 0 then
  local scores = redis.call('HMGET', KEYS[4], unpack(due))
  for i, lid in ipairs(due) do
    redis.call('ZADD', KEYS[2], scores[i] or '0', lid)
  end
  redis.call('ZREM', KEYS[3], unpack(due))
  redis.call('HDEL', KEYS[4], unpack(due))
end
local count = tonumber(ARGV[1])
if count <= 0 then return {} end
local popped
if ARGV[6] == 'due' then
  popped = {}
  local asked = redis.call('ZRANGEBYSCORE', KEYS[12], '-inf', ARGV[2], 'LIMIT', 0, count)
  for _, lid in ipairs(asked) do
    local score = redis.call('ZSCORE', KEYS[2], lid)
    if score then
      redis.call('ZREM', KEYS[2], lid)
    else
      local at = redis.call('ZSCORE', KEYS[3], lid)
      if at and tonumber(at) <= tonumber(ARGV[2]) then  -- due, beyond the promotion limit above
        score = redis.call('HGET', KEYS[4], lid) or '0'
        redis.call('ZREM', KEYS[3], lid)
        redis.call('HDEL', KEYS[4], lid)
      elseif not at then
        redis.call('ZREM', KEYS[12], lid)  -- neither in line nor waiting (any more): nothing to lease
      end
    end
    if score then
      popped[#popped + 1] = lid
      popped[#popped + 1] = score
    end
  end
else
  popped = redis.call('ZPOPMIN', KEYS[2], count)
end
if #popped == 0 then return {} end
local token = redis.call('INCR', KEYS[8])
local ids, expiry, owner = {}, {}, {}
for i = 1, #popped, 2 do
  local lid = popped[i]
  ids[#ids + 1] = lid
  expiry[#expiry + 1] = ARGV[3]
  expiry[#expiry + 1] = lid
  owner[#owner + 1] = lid
  owner[#owner + 1] = token .. ' ' .. popped[i + 1] .. ' ' .. ARGV[4]
end
redis.call('ZADD', KEYS[5], unpack(expiry))
redis.call('HSET', KEYS[6], unpack(owner))
redis.call('SADD', KEYS[7], unpack(ids))
local data = redis.call('HMGET', KEYS[9], unpack(ids))
local states = redis.call('HMGET', KEYS[10], unpack(ids))
local cbs = redis.call('HMGET', KEYS[11], unpack(ids))
local drops = redis.call('HMGET', KEYS[13], unpack(ids))
redis.call('HDEL', KEYS[11], unpack(ids))
redis.call('ZREM', KEYS[12], unpack(ids))
redis.call('HDEL', KEYS[13], unpack(ids))
local out = {token}
for i, lid in ipairs(ids) do
  out[#out + 1] = lid
  out[#out + 1] = data[i] or ''
  out[#out + 1] = states[i] or ''
  out[#out + 1] = cbs[i] or ''
  out[#out + 1] = drops[i] or ''
end
return out
"""

# KEYS: def, leases, owner, held(node), hopper, done, sched, sched_score, states, cbs, cbs_at, leads, kept, drops
# ARGV: lead id, token, node id, mode ('done' | 'back' | 'at'), outcome, eligible_at, hopper state ('' = keep
# what is kept), the state's callback ('<at> <agent id>', '' = none)
# Returns false (unknown campaign), 0 (not leased), -1 (leased under another token: stale holder), 1 (released).
# A lead done loses its kept hopper state and any callback or code asked for it. One back in line first takes the
# codes kept for its holder that the holder did not pick up (`settle_kept`: it may end there); then, with a callback
# (asked and not yet picked up by the holder, else the one its state carries), it waits in the schedule until its
# time.
RELEASE = _SETTLE_KEPT + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local lid = ARGV[1]
local rec = redis.call('HGET', KEYS[3], lid)
if not rec then return 0 end
local token, score, node = string.match(rec, '^(%S+) (%S+) (.*)$')
if token ~= ARGV[2] or node ~= ARGV[3] then return -1 end
redis.call('HDEL', KEYS[3], lid)
redis.call('ZREM', KEYS[2], lid)
redis.call('SREM', KEYS[4], lid)
if ARGV[4] == 'done' then
  redis.call('HSET', KEYS[6], lid, ARGV[5])
  redis.call('HDEL', KEYS[9], lid)
  redis.call('HDEL', KEYS[10], lid)
  redis.call('ZREM', KEYS[11], lid)
  redis.call('HDEL', KEYS[13], lid)
  redis.call('HDEL', KEYS[14], lid)
  return 1
end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[9], lid, ARGV[7]) end
if settle_kept({leads = KEYS[12], states = KEYS[9], kept = KEYS[13], drops = KEYS[14], done = KEYS[6],
                cbs = KEYS[10], cbs_at = KEYS[11]}, lid) then
  return 1
end
local mode, at = ARGV[4], ARGV[6]
local cb = redis.call('HGET', KEYS[10], lid)
if not cb and ARGV[8] ~= '' then
  cb = ARGV[8]
  redis.call('HSET', KEYS[10], lid, cb)
end
if cb then
  mode, at = 'at', string.match(cb, '^(%S+)')
  redis.call('ZADD', KEYS[11], at, lid)
end
if mode == 'back' then
  redis.call('ZADD', KEYS[5], score, lid)
else
  redis.call('ZADD', KEYS[7], at, lid)
  redis.call('HSET', KEYS[8], lid, score)
end
return 1
"""

# KEYS: def, hopper, sched, sched_score, done, states, cbs, cbs_at, drops
# ARGV: lead id.  Only a pending lead (in the hopper or waiting for its time) can be removed.
REMOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n = redis.call('ZREM', KEYS[2], ARGV[1]) + redis.call('ZREM', KEYS[3], ARGV[1])
if n == 0 then return 0 end
redis.call('HDEL', KEYS[9], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], 'removed')
return 1
"""

# KEYS: def, hopper, sched, leases, done
COUNTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return {redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]), redis.call('ZCARD', KEYS[4]),
        redis.call('HLEN', KEYS[5])}
"""

# KEYS: leases, owner, hopper, inflight, sched, sched_score, lost, cbs, cbs_at, leads, states, kept, drops, done
# ARGV: now, limit, hold until.  Leases due by `now` (their node stopped renewing: it died, or lost Redis
# for longer than the TTL) go back at their old place in line, attempts untouched. A lead with a call still
# in flight (an attempt without outcome) may be live on the dead node's PBX, which nobody else can consult:
# it waits in the schedule until `hold until` and its call id is listed in `lost` (with `now`) for the
# caller to write the `lost` outcome. A lead with a callback asked (not picked up by the dead node), or one in the
# state its holder kept, waits in the schedule until its time (and the hold); one whose kept state has a recycle
# time ahead waits until then. Codes kept for the dead holder take effect (`settle_kept`): a lead they
# end is done, not returned to line. Returns {lead id, node id, call id or '', ...}.
EXPIRE = _SETTLE_KEPT + """
local K = {leads = KEYS[10], states = KEYS[11], kept = KEYS[12], drops = KEYS[13], done = KEYS[14], cbs = KEYS[8],
           cbs_at = KEYS[9]}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return {} end
local out = {}
for _, lid in ipairs(due) do
  local rec = redis.call('HGET', KEYS[2], lid)
  local score, node = '0', ''
  if rec then
    local _t, s, n = string.match(rec, '^(%S+) (%S+) (.*)$')
    score, node = s, n
  end
  local call = redis.call('HGET', KEYS[4], lid)
  local wait = nil
  if call then
    wait = ARGV[3]
    redis.call('HSET', KEYS[7], call, ARGV[1])
    redis.call('HDEL', KEYS[4], lid)
  else
    call = ''
  end
  if not settle_kept(K, lid) then
    local cb = redis.call('HGET', KEYS[8], lid)
    -- The hopper state its holder last kept for it (`CHECKPOINT`, or its last hand-back): a callback it had
    -- applied is kept as asked; else it waits out its recycle time, as it would have on its holder.
    local raw = redis.call('HGET', K.states, lid)
    local ok, st = false, nil
    if raw then ok, st = pcall(cjson.decode, raw) end
    if ok and type(st) == 'table' and not cb then
      if type(st.cb) == 'number' then
        cb = string.format('%.17g', st.cb) .. ' ' .. (type(st.ag) == 'string' and st.ag or '')
        redis.call('HSET', KEYS[8], lid, cb)
      elseif type(st.t) == 'number' and st.t > tonumber(ARGV[1]) and (not wait or st.t > tonumber(wait)) then
        wait = string.format('%.17g', st.t)
      end
    end
    if cb then
      local at = string.match(cb, '^(%S+)')
      if not wait or tonumber(at) > tonumber(wait) then wait = at end
      redis.call('ZADD', KEYS[9], wait, lid)
    end
    if wait then
      redis.call('ZADD', KEYS[5], wait, lid)
      redis.call('HSET', KEYS[6], lid, score)
    else
      redis.call('ZADD', KEYS[3], score, lid)
    end
  end
  redis.call('HDEL', KEYS[2], lid)
  out[#out + 1] = lid
  out[#out + 1] = node
  out[#out + 1] = call
end
redis.call('ZREM', KEYS[1], unpack(due))
return out
"""

# KEYS: owner, states
# ARGV: lead id, token, node id, hopper state (JSON).  The holder's latest state of a lead it holds, kept with the
# lease for whoever has the lead next if the holder dies (`EXPIRE`). Returns 0, nothing written, if the lease is not
# this holder's (lost to another node: its state is the one that counts).
CHECKPOINT = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return 0 end
local token, _s, node = string.match(rec, '^(%S+) (%S+) (.*)$')
if token ~= ARGV[2] or node ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return 1
"""

# KEYS: leases, owner, held(node)
# ARGV: expires at, node id, then the live tokens ('*' = every token of the node).
# A token the node never heard back about (its reply was lost) is not renewed, so those leads expire.
# Returns the lead ids renewed (a lead the node believes it holds and is not among them: its lease is lost).
RENEW = """
local members = redis.call('SMEMBERS', KEYS[3])
local any = ARGV[3] == '*'
local allow = {}
for i = 3, #ARGV do allow[ARGV[i]] = true end
local renewed = {}
local stale = {}
for _, lid in ipairs(members) do
  local rec = redis.call('HGET', KEYS[2], lid)
  local token, node = nil, nil
  if rec then
    local t, _s, n = string.match(rec, '^(%S+) (%S+) (.*)$')
    token, node = t, n
  end
  if node == ARGV[2] then
    if any or allow[token] then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[1], lid)
      renewed[#renewed + 1] = lid
    end
  else
    stale[#stale + 1] = lid
  end
end
for i = 1, #stale, 1000 do
  redis.call('SREM', KEYS[3], unpack(stale, i, math.min(i + 999, #stale)))
end
return renewed
"""

# KEYS: attempts, attempt_order, attempt_last, attempt_log, tries, tries_hour, tries_day, inflight, attempt_dial,
#       attempt_dial_upto, owner
# ARGV: call id, attempt json, lead id, stream maxlen ('' = keep all), hour bucket ttl, day bucket ttl,
#       '1' if the attempt has its outcome else '0', dialed at, node id ('' = no lease check)
# With a node id (a dial's record, `record_dial`), a call not recorded yet is written only if that node holds the
# lead's lease (`owner`): otherwise nothing is written and -1 returned (the call must not be made).
# The first record of a call id gets its place in the campaign's order and counts one try for the lead;
# later records (the outcome) only update it. Every record is appended to the stream. `inflight` maps a
# lead to its call while that call has no outcome (what EXPIRE must not send back to the hopper at once).
# `attempt_dial` (call id -> dialed at) is the index pages are read from; `attempt_dial_upto` is the place in
# `attempt_order` through which it is complete: it moves on with this record only if it was complete through the
# one before (records of nodes of earlier versions, which write no index, are indexed by the reader).
RECORD_ATTEMPT = """
if ARGV[9] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local rec = redis.call('HGET', KEYS[11], ARGV[3])
  if not rec or string.match(rec, '^%S+ %S+ (.*)$') ~= ARGV[9] then return -1 end
end
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[9], ARGV[8], ARGV[1])
if new == 1 then
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  if us <= last then us = last + 1 end
  local s = string.format('%.17g', us)
  redis.call('SET', KEYS[3], s)
  redis.call('ZADD', KEYS[2], s, ARGV[1])
  if tonumber(redis.call('GET', KEYS[10]) or '0') >= last then redis.call('SET', KEYS[10], s) end
  redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
  redis.call('HINCRBY', KEYS[6], ARGV[3], 1)
  redis.call('EXPIRE', KEYS[6], ARGV[5])
  redis.call('HINCRBY', KEYS[7], ARGV[3], 1)
  redis.call('EXPIRE', KEYS[7], ARGV[6])
end
if ARGV[7] == '1' then
  if redis.call('HGET', KEYS[8], ARGV[3]) == ARGV[1] then redis.call('HDEL', KEYS[8], ARGV[3]) end
else
  redis.call('HSET', KEYS[8], ARGV[3], ARGV[1])
end
if ARGV[4] == '' then
  redis.call('XADD', KEYS[4], '*', 'call_id', ARGV[1], 'attempt', ARGV[2])
else
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'call_id', ARGV[1], 'attempt', ARGV[2])
end
return new
"""

# KEYS: totals (hash live/abandoned/minute), snapshots (zset: minute -> "minute:live:abandoned")
# ARGV: minute, 1 if abandoned else 0, minutes of snapshots to keep
# Cumulative totals plus one snapshot per minute: any window's counts are `totals - snapshot before it`,
# in O(log n), however long the window.
RECORD_LIVE = """
local m = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'minute') or '-1')
if m < last then m = last end
local live = redis.call('HINCRBY', KEYS[1], 'live', 1)
local ab = redis.call('HINCRBY', KEYS[1], 'abandoned', tonumber(ARGV[2]))
local ms = string.format('%d', m)
redis.call('HSET', KEYS[1], 'minute', ms)
redis.call('ZREMRANGEBYSCORE', KEYS[2], ms, ms)
redis.call('ZADD', KEYS[2], ms, ms .. ':' .. live .. ':' .. ab)
if m > last then
  local old = redis.call('ZCOUNT', KEYS[2], '-inf', string.format('%d', m - tonumber(ARGV[3])))
  if old > 1 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, old - 2) end
end
return {live, ab}
"""

# KEYS: hour counter, day counter
# ARGV: hour cap, day cap, hour ttl, day ttl.  Take one use of the DID only if both caps allow it.
DID_TAKE = """
local h = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
if h >= tonumber(ARGV[1]) or d >= tonumber(ARGV[2]) then return {0, h, d} end
h = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
d = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, h, d}
"""

# KEYS: hour counter, day counter.  Give back one use taken by DID_TAKE (a call not made), never below zero.
DID_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 1
"""


# KEYS: the debtor history hash, shared by every campaign (lead id -> {"a": [...], "c": [...], "x": [...],
#       "w": [...], "k": seconds kept, "n": entries kept per kind})
# ARGV: lead id, kind (a attempt, c contact, x abandon, w a contact found to be a wrong party), time, seconds kept,
#       entries kept per kind
# Per-debtor instants the compliance caps look at, so a lead on another node (its node died or stopped, or the
# debtor is in another node's campaign) is judged on its whole history there. The script's read-modify-write
# is atomic, so nodes noting one debtor at once lose nothing. Each debtor keeps the longest horizon and depth
# any campaign asked for: a campaign with short caps must not trim what a 7-day cap elsewhere still counts.
DEBTOR_NOTE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local h = {}
if raw then h = cjson.decode(raw) end
local t = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
if type(h.k) == 'number' and h.k > keep then keep = h.k end
local maxn = tonumber(ARGV[5])
if type(h.n) == 'number' and h.n > maxn then maxn = h.n end
h.k = keep
h.n = maxn
local cutoff = t - keep
local list = h[ARGV[2]]
if type(list) ~= 'table' then list = {} end
local kept = {}
for _, x in ipairs(list) do
  if x >= cutoff then table.insert(kept, x) end
end
table.insert(kept, t)
table.sort(kept)
while #kept > maxn do table.remove(kept, 1) end
h[ARGV[2]] = kept
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return #kept
"""

# A campaign edit's compare-and-set: the new definition is written only over the very text the edit was made from,
# so of two edits at once (any nodes) neither undoes the other; the one that finds the text changed tries again.
# KEYS: def ; ARGV: the definition read, the new definition
# Returns 1 (written), false (no such campaign) or the definition stored now (changed meanwhile; nothing written).
CAMPAIGN_CAS = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
if current ~= ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# The status asked of a campaign (start/pause/stop through any node), kept beside its definition.
# KEYS: def, status ; ARGV: the status
# Returns the status kept before ('created' if none was), or false (no such campaign; nothing written).
CAMPAIGN_STATUS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local before = redis.call('GET', KEYS[2]) or 'created'
if before == ARGV[2] then return '-' .. before end
redis.call('SET', KEYS[2], ARGV[1])
return before
"""


# The start of a script asked about one lead (ARGV[1]) of a campaign: false if there is no such campaign (KEYS[1],
# its def), 'unknown' if the lead is not one of its leads (KEYS[2]), 'done' or 'removed' if it ended (KEYS[7]).
_LEAD_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local lid = ARGV[1]
if redis.call('HEXISTS', KEYS[2], lid) == 0 then return 'unknown' end
local done = redis.call('HGET', KEYS[7], lid)
if done then
  if done == 'removed' then return 'removed' end
  return 'done'
end
"""


# A callback asked for a lead (API, any node). KEYS: def, leads, hopper, sched, sched_score, owner, done, cbs, cbs_at
# ARGV: lead id, at, agent id ('' = anyone)
# A pending lead (in line or waiting for its time) waits in the schedule until `at` (a callback outranks a recycle
# time, as in the hopper), its callback kept in `cbs` for its next leaser and in `cbs_at` for the nodes that lease
# due callbacks; a leased lead's callback waits in `cbs` for its holder. Returns 'pending', 'leased', or (nothing
# written) 'done', 'removed', 'unknown'; false if there is no such campaign.
CB_ASK = _LEAD_OPEN + """
local cb = ARGV[2] .. ' ' .. ARGV[3]
if redis.call('HEXISTS', KEYS[6], lid) == 1 then
  redis.call('HSET', KEYS[8], lid, cb)
  return 'leased'
end
local score = redis.call('ZSCORE', KEYS[3], lid)
if score then
  redis.call('ZREM', KEYS[3], lid)
  redis.call('HSET', KEYS[5], lid, score)
elseif not redis.call('ZSCORE', KEYS[4], lid) then
  return 'unknown'
end
redis.call('ZADD', KEYS[4], ARGV[2], lid)
redis.call('HSET', KEYS[8], lid, cb)
redis.call('ZADD', KEYS[9], ARGV[2], lid)
return 'pending'
"""

# Asked callbacks a holder applied are forgotten, each only if it is still the one it applied.
# KEYS: cbs ; ARGV: lead id, callback, lead id, callback, ...  Returns how many were forgotten.
CB_CLEAR = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

# ------------------------------------------------------------------ webhook events kept (given up or dropped)
# Keys (one hash tag, `{wh}`, so they share a Cluster slot): docs hash id -> doc JSON {h, k, d, e, r, t}; ids zset
# id -> id; by hash "<hook>\n<delivery>" -> id; seq counter; counts hash hook -> kept; tries hash id -> times given up.

# forget(id): one kept event gone from every key (KEYS: docs, ids, by, seq, counts, tries); 1 if it was kept.
_WEBHOOK_FORGET = """
local function forget(id)
  local doc = redis.call('HGET', KEYS[1], id)
  if not doc then return 0 end
  local d = cjson.decode(doc)
  redis.call('HDEL', KEYS[3], d['h'] .. '\\n' .. d['d'])
  if redis.call('HINCRBY', KEYS[5], d['h'], -1) <= 0 then redis.call('HDEL', KEYS[5], d['h']) end
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[6], id)
  redis.call('ZREM', KEYS[2], id)
  return 1
end
"""

# keep(by, hook, doc, cap, again): keep one event (KEYS: docs, ids, by, seq, counts, tries). The same hook and
# delivery (`by`: "<hook>\n<delivery>") kept again updates its entry when `again` (one more try, same id), else is
# left as it is; a new one takes the next id, then the oldest go until `cap` are kept. Returns id, dropped.
_WEBHOOK_KEEP_FN = _WEBHOOK_FORGET + """
local function keep(by, hook, doc, cap, again)
  local known = redis.call('HGET', KEYS[3], by)
  if known and redis.call('HEXISTS', KEYS[1], known) == 1 then
    if again then
      redis.call('HSET', KEYS[1], known, doc)
      redis.call('HINCRBY', KEYS[6], known, 1)
    end
    return tonumber(known), 0
  end
  local id = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[1], id, doc)
  redis.call('ZADD', KEYS[2], id, id)
  redis.call('HSET', KEYS[3], by, id)
  redis.call('HSET', KEYS[6], id, 1)
  redis.call('HINCRBY', KEYS[5], hook, 1)
  local dropped = 0
  local over = redis.call('ZCARD', KEYS[2]) - math.max(tonumber(cap), 1)
  if over > 0 then
    for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
      dropped = dropped + forget(old)
    end
  end
  return id, dropped
end
"""

# KEYS: docs, ids, by, seq, counts, tries ; ARGV: "<hook>\n<delivery>", hook, doc, cap.  Returns {id, dropped}.
WEBHOOK_KEEP = _WEBHOOK_KEEP_FN + """
local id, dropped = keep(ARGV[1], ARGV[2], ARGV[3], ARGV[4], true)
return {id, dropped}
"""

# A node's webhook outbox: hash "<hook>\n<delivery>" -> "<order> <doc without its closing brace>" ({h, k, d, e}),
# the events it queued and has neither delivered nor kept. Claimed (a node gone, or this node's own from before a
# restart): each becomes a kept event, in the order they were queued, with `r` and `t` added; one already kept
# stays as it is. KEYS: docs, ids, by, seq, counts, tries, outbox, outboxes ; ARGV: node id, reason (JSON string),
# at, cap.  Returns {dropped, {ids}}.
OUTBOX_CLAIM = _WEBHOOK_KEEP_FN + """
local raw = redis.call('HGETALL', KEYS[7])
local rows = {}
for i = 1, #raw, 2 do
  local order, doc = string.match(raw[i + 1], '^(%d+) (.*)$')
  if order then rows[#rows + 1] = {tonumber(order), raw[i], doc} end
end
table.sort(rows, function(a, b) return a[1] < b[1] end)
local ids, dropped = {}, 0
for _, row in ipairs(rows) do
  local hook = string.match(row[2], '^(.-)\\n')
  local id, n = keep(row[2], hook, row[3] .. ',"r":' .. ARGV[2] .. ',"t":' .. ARGV[3] .. '}', ARGV[4], false)
  ids[#ids + 1] = id
  dropped = dropped + n
end
redis.call('DEL', KEYS[7])
redis.call('SREM', KEYS[8], ARGV[1])
return {dropped, ids}
"""

# KEYS: docs, ids, by, seq, counts, tries ; ARGV: ids.  Returns how many were kept.
WEBHOOK_DROP = _WEBHOOK_FORGET + """
local n = 0
for _, id in ipairs(ARGV) do
  n = n + forget(id)
end
return n
"""

# A disposition's effect asked for a lead by a node whose hopper no longer holds it (`ask_disposition`).
# KEYS: def, leads, hopper, sched, sched_score, owner, done, kept, states, drops, cbs, cbs_at
# ARGV: lead id, the code (one line of JSON, `StoredCode.as_dict`)
# A leased lead keeps the code for its holder (once: a retried write adds nothing); a lead waiting in the store (in
# line or in the schedule) takes it at once (`settle_kept`). Returns 'ended' (it ended the waiting lead), 'pending'
# (a phone dropped, the lead waits), 'leased', or (nothing written) 'done', 'removed', 'unknown'; false if there is
# no such campaign.
DISPO_ASK = _SETTLE_KEPT + _LEAD_OPEN + """
if redis.call('HEXISTS', KEYS[6], lid) == 1 then
  local had = redis.call('HGET', KEYS[8], lid)
  if not had then
    redis.call('HSET', KEYS[8], lid, ARGV[2])
  elseif not string.find('\\n' .. had .. '\\n', '\\n' .. ARGV[2] .. '\\n', 1, true) then
    redis.call('HSET', KEYS[8], lid, had .. '\\n' .. ARGV[2])
  end
  return 'leased'
end
if not redis.call('ZSCORE', KEYS[3], lid) and not redis.call('ZSCORE', KEYS[4], lid) then return 'unknown' end
redis.call('HSET', KEYS[8], lid, ARGV[2])
if settle_kept({leads = KEYS[2], states = KEYS[9], kept = KEYS[8], drops = KEYS[10], done = KEYS[7], cbs = KEYS[11],
                cbs_at = KEYS[12]}, lid) then
  redis.call('ZREM', KEYS[3], lid)
  redis.call('ZREM', KEYS[4], lid)
  redis.call('HDEL', KEYS[5], lid)
  return 'ended'
end
return 'pending'
"""
