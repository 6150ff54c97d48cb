-- wrk script of benches/proxy_e2e.sh: every request a GET of /l2/N, N drawn
-- at random below the count given after `--` (default 10000), so that a
-- run spreads over all the keys the proxy warmed into Redis.
local keys = 10000

function init(args)
    if args[1] then
        keys = tonumber(args[1])
    end
    math.randomseed(12345)
end

function request()
    return wrk.format("GET", "/l2/" .. math.random(0, keys - 1))
end
