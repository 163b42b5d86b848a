#include "proxy/http/http1/codec.h"
