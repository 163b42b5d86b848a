#include "proxy/http/http2/codec.h"
