import { accessSync, constants, readFileSync } from 'node:fs';
import type { Credentials, Provider } from './client.js';
import { DEFAULT_BASE_URLS } from './client.js';
import { ConfigError } from './errors.js';

/** Environment variables read for each provider's secrets (each also as `<NAME>_FILE`). */
export const SECRET_ENV: Readonly<Record<Provider, Readonly<Record<'apiKey' | 'virtualKey' | 'portkeyConfig', string | undefined>>>> = Object.freeze({
  portkey: { apiKey: 'PORTKEY_API_KEY', virtualKey: 'PORTKEY_VIRTUAL_KEY', portkeyConfig: 'PORTKEY_CONFIG' },
  openai: { apiKey: 'OPENAI_API_KEY', virtualKey: undefined, portkeyConfig: undefined },
  // a Microsoft Entra ID access token for https://ai.azure.com; AZURE_AI_TOKEN_FILE is re-read as it rotates
  azure: { apiKey: 'AZURE_AI_TOKEN', virtualKey: undefined, portkeyConfig: undefined },
});

/**
 * Reads one secret from `NAME` or from the file named by `NAME_FILE` (Docker and Kubernetes
 * secrets); trailing whitespace of a file is dropped. Both set is an error.
 */
export function readSecret(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const direct = env[name];
  const file = env[`${name}_FILE`];
  if (direct && file) throw new ConfigError(`both ${name} and ${name}_FILE are set: keep one`);
  if (file) {
    let content: string;
    try {
      content = readFileSync(file, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'error';
      throw new ConfigError(`cannot read ${name}_FILE (${file}): ${code}; point it at a readable file holding the secret`);
    }
    const value = content.trim();
    if (value === '') throw new ConfigError(`${name}_FILE (${file}) is empty`);
    return value;
  }
  return direct === '' ? undefined : direct;
}

/**
 * Reads a provider's credentials from the environment. The API key is required when the base
 * URL is the provider's hosted API; a self-hosted gateway or compatible server may need none.
 */
export function credentialsFromEnv(provider: Provider, baseUrl: string | undefined, env: NodeJS.ProcessEnv = process.env): Credentials {
  const names = SECRET_ENV[provider];
  if (provider === 'azure') return azureCredentials(env);
  const credentials: Credentials = {
    apiKey: names.apiKey ? readSecret(env, names.apiKey) : undefined,
    virtualKey: names.virtualKey ? readSecret(env, names.virtualKey) : undefined,
    portkeyConfig: names.portkeyConfig ? readSecret(env, names.portkeyConfig) : undefined,
    // not a secret: the Model Catalog slug that replaced virtual keys
    portkeyProvider: provider === 'portkey' ? env.PORTKEY_PROVIDER || undefined : undefined,
  };
  const hosted = baseUrl?.replace(/\/+$/, '') === DEFAULT_BASE_URLS[provider];
  if (hosted && !credentials.apiKey) {
    throw new ConfigError(`missing API key: set ${names.apiKey} (or ${names.apiKey}_FILE) for ${baseUrl}`);
  }
  return credentials;
}

/** Azure always needs a token: `AZURE_AI_TOKEN`, or `AZURE_AI_TOKEN_FILE`, which the client re-reads as it rotates. */
function azureCredentials(env: NodeJS.ProcessEnv): Credentials {
  const file = env.AZURE_AI_TOKEN_FILE;
  if (env.AZURE_AI_TOKEN && file) throw new ConfigError('both AZURE_AI_TOKEN and AZURE_AI_TOKEN_FILE are set: keep one');
  if (file) {
    try {
      accessSync(file, constants.R_OK);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'error';
      throw new ConfigError(`cannot read AZURE_AI_TOKEN_FILE (${file}): ${code}; point it at a readable file holding the token`);
    }
    return { tokenFile: file };
  }
  if (!env.AZURE_AI_TOKEN) throw new ConfigError('missing token: set AZURE_AI_TOKEN or AZURE_AI_TOKEN_FILE (a Microsoft Entra ID token for https://ai.azure.com)');
  return { apiKey: env.AZURE_AI_TOKEN };
}
