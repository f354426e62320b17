// The page's calls to natterd's HTTP side-port (docs/HTTP.md), which also served the page: every
// path is relative to the page's own origin, so no CORS is involved. Failures become one of two
// errors the page can show as a sentence: `Unreachable` (no answer at all: natterd is down or the
// network is) and `ApiError` (natterd answered with an error code from the catalogue).

/** natterd did not answer: it is down, or the network between is. */
export class Unreachable extends Error {}

/** natterd answered with `{"error": {"code", "message"}}` and this status. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** How long one side-port request may take before the page calls natterd unreachable, in ms. */
const REQUEST_TIMEOUT_MS = 10_000;

/**
 * Sends one request; resolves to the parsed JSON answer (null for 204).
 *
 * Errors: `Unreachable` when no HTTP answer came within 10 s, `ApiError` for a 4xx/5xx answer
 * (its `code` is the stable error code; a body that is not the error object gets `http_<status>`).
 */
export async function request(method: string, path: string, token?: string, body?: unknown): Promise<any> {
  const headers: Record<string, string> = {};
  if (token) headers['Authorization'] = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let answer: Response;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  try {
    answer = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      signal: abort.signal,
    });
  } catch (e) {
    throw new Unreachable(`natterd does not answer at ${location.origin} (${e instanceof Error ? e.message : String(e)})`);
  } finally {
    clearTimeout(timer);
  }
  if (answer.status === 204) return null;
  const text = await answer.text().catch(() => '');
  let json: any = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!answer.ok) {
    const err = json && typeof json === 'object' ? json.error : null;
    const code = err && typeof err.code === 'string' ? err.code : `http_${answer.status}`;
    const message = err && typeof err.message === 'string' ? err.message : `HTTP ${answer.status}`;
    throw new ApiError(answer.status, code, message);
  }
  return json;
}

/** A sentence for the user about any error `request` (or anything else) threw. */
export function describe(e: unknown): string {
  if (e instanceof Unreachable) return `${e.message}. Is natterd running?`;
  if (e instanceof ApiError) return `${e.message} (${e.code})`;
  return e instanceof Error ? e.message : String(e);
}
