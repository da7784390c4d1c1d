import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildConfig, ConfigError, parseDuration, parseListenAddress } from '../../src/config';

describe('config', () => {
  it('has the documented defaults', () => {
    const config = buildConfig({});
    assert.equal(config.criSocket, '/run/cri-portforward/cri.sock');
    assert.equal(config.stateDir, '/var/lib/cri-portforward');
    assert.deepEqual(config.streamAddress, { host: '127.0.0.1', port: 0 });
    assert.equal(config.tokenTtlMs, 60_000);
    assert.equal(config.maxInflightTokens, 1000);
    assert.equal(config.logLevel, 'info');
    assert.equal(config.tlsCert, undefined);
    assert.equal(config.halfCloseGraceMs, 1000);
    assert.equal(config.streamIdleTimeoutMs, 4 * 3_600_000);
    assert.equal(config.refusedDial, 'reset');
    assert.equal(config.streamCreationTimeoutMs, 30_000);
    assert.equal(config.websocketPingIntervalMs, 30_000);
  });

  it('parses Go-style durations', () => {
    assert.equal(parseDuration('x', '500ms'), 500);
    assert.equal(parseDuration('x', '30s'), 30_000);
    assert.equal(parseDuration('x', '1m30s'), 90_000);
    assert.equal(parseDuration('x', '4h'), 4 * 3_600_000);
    assert.equal(parseDuration('x', '1.5s'), 1500);
    for (const bad of ['', '10', 's', '1x', '1m 2s', '-1s']) {
      assert.throws(() => parseDuration('token-ttl', bad), /--token-ttl must be a duration/);
    }
  });

  it('parses listen addresses, IPv6 in brackets', () => {
    assert.deepEqual(parseListenAddress('a', '0.0.0.0:10010'), { host: '0.0.0.0', port: 10010 });
    assert.deepEqual(parseListenAddress('a', '[::1]:0'), { host: '::1', port: 0 });
    assert.deepEqual(parseListenAddress('a', 'localhost:8080'), { host: 'localhost', port: 8080 });
    for (const bad of ['127.0.0.1', ':80', '127.0.0.1:65536', '::1:80', '[nope]:1', 'a:b']) {
      assert.throws(() => parseListenAddress('stream-address', bad), ConfigError, bad);
    }
  });

  it('rejects bad flag values with a message naming the flag', () => {
    assert.throws(() => buildConfig({ 'tls-cert': '/c.pem' }), /--tls-cert and --tls-key must be given together/);
    assert.throws(() => buildConfig({ 'log-level': 'loud' }), /--log-level must be one of/);
    assert.throws(() => buildConfig({ 'cri-socket': 'relative.sock' }), /--cri-socket must be an absolute path/);
    assert.throws(() => buildConfig({ 'max-inflight-tokens': '0' }), /--max-inflight-tokens must be a positive integer/);
    assert.throws(() => buildConfig({ 'max-inflight-tokens': '1e3' }), /--max-inflight-tokens/);
    assert.throws(() => buildConfig({ 'token-ttl': '0s' }), /--token-ttl must be at least/);
    assert.throws(() => buildConfig({ 'refused-dial': 'ignore' }), /--refused-dial must be reset or error/);
    assert.throws(() => buildConfig({ upstream: '/run/containerd/containerd.sock' }), /--upstream must be unix:\/\/\/path/);
    assert.equal(buildConfig({ upstream: 'unix:///run/containerd/containerd.sock' }).upstream, 'unix:///run/containerd/containerd.sock');
    assert.equal(buildConfig({ upstream: '127.0.0.1:10010' }).upstream, '127.0.0.1:10010');
  });
});
